"""Speculative decoding with a draft model (`speculative_algorithm="STANDALONE"`): outputs identical to
plain decoding, greedy and seeded, with a draft that agrees (the default model drafting for itself: most
drafts accepted) and one that does not (random weights); under memory pressure that retracts requests;
and the draft model's KV slots and rows all returned once the requests end."""

from __future__ import annotations

import json

import pytest

import loomlm
from loomlm.runtime.models.loader import default_model_path

TINY = json.dumps(
    {
        "num_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 256,
        "vocab_size": 300,
    }
)


def _integrity(engine: loomlm.Engine) -> None:
    drafter = engine.core.scheduler.drafter
    engine.core.call(drafter.check_integrity)
    assert drafter.held_slots() == 0 and not drafter.states
    engine.idle_integrity()


def test_the_default_model_drafting_for_itself_is_accepted_and_changes_nothing():
    prompts = ["The capital of France is", "Write a haiku about the sea.", "List the planets of the solar system:"]
    params = {"max_new_tokens": 32, "temperature": 0}
    common = {"dtype": "float32", "max_total_tokens": 4096, "max_running_requests": 8}
    with loomlm.Engine(**common) as plain:
        want = plain.generate(prompts, params)
    spec_args = {"speculative_algorithm": "STANDALONE", "speculative_draft_model_path": default_model_path()}
    with loomlm.Engine(**common, **spec_args) as spec:
        got = spec.generate(prompts, params)
        stats = spec.get_stats()
        _integrity(spec)
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in want]
    assert stats["spec_accepted_tokens"] >= 0.8 * stats["spec_draft_tokens"] > 0
    assert stats["spec_accept_length"] > 2.5  # tokens per request and verify pass
    assert all(o["meta_info"]["spec_verify_ct"] > 0 for o in got)


@pytest.mark.parametrize("pool", [4096, 160])  # 160 slots: running requests get retracted
def test_a_draft_that_disagrees_changes_nothing_greedy_or_seeded(pool):
    common = dict(
        load_format="dummy", json_model_override_args=TINY, dtype="float32", max_running_requests=8, random_seed=7
    )
    prompts = [[(7 * i + j) % 290 + 3 for j in range(10 + 3 * i)] for i in range(6)]
    greedy = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    seeded = {"max_new_tokens": 24, "temperature": 0.9, "top_p": 0.9, "seed": 11, "ignore_eos": True}
    with loomlm.Engine(max_total_tokens=4096, **common) as plain:
        want = [plain.generate(input_ids=prompts, sampling_params=p) for p in (greedy, seeded)]
    spec_args = {"speculative_algorithm": "STANDALONE", "speculative_draft_model_path": default_model_path()}
    with loomlm.Engine(max_total_tokens=pool, **common, **spec_args) as spec:
        drafter = spec.core.scheduler.drafter
        propose = drafter.propose

        def checked_propose(reqs):  # after every catch-up: what the draft model holds is the sequence
            drafts = propose(reqs)
            for req in reqs:
                drafter.check_request(req)
            return drafts

        drafter.propose = checked_propose
        got = [spec.generate(input_ids=prompts, sampling_params=p) for p in (greedy, seeded)]
        stats = spec.get_stats()
        _integrity(spec)
    for g, w in zip(got, want, strict=True):
        assert [o["output_ids"] for o in g] == [o["output_ids"] for o in w]
    assert stats["spec_draft_tokens"] > 0
    if pool == 160:
        assert stats["retracted_requests"] > 0


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="needs speculative_draft_model_path"):
        loomlm.EngineConfig(speculative_algorithm="STANDALONE")
    with pytest.raises(ValueError, match="only read with speculative_algorithm 'STANDALONE'"):
        loomlm.EngineConfig(speculative_draft_model_path=default_model_path())
    with pytest.raises(ValueError, match="speculative_draft_model_path: model path '/nope/draft.gguf' does not exist"):
        loomlm.Engine(
            max_total_tokens=256, speculative_algorithm="STANDALONE", speculative_draft_model_path="/nope/draft.gguf"
        )
