"""select: each choices method returns the argmax of its defined score, checked against scores computed
here independently (one fresh engine request per choice, logprobs of the whole sequence), and the prompt
is computed once with all choices scored in one batched extend."""

from __future__ import annotations

import math

import pytest

import loomlm as sgl
from loomlm.lang.backends.local import LocalBackend

PROMPT = "Question: Which animal says moo?\nAnswer: The"
CHOICES = [" cow", " dog", " cat", " cowbird", " elephant seal"]


@pytest.fixture(scope="module")
def local(engine):
    return LocalBackend(engine)


def _independent_logprobs(engine, text: str, start: int) -> list[float]:
    """Logprobs of the tokens of `text` from position `start`, from a request that starts cold."""
    ids = engine.tokenizer(text)["input_ids"]
    out = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=0,
        cache_salt="independent-oracle",
    )
    return [lp for lp, _tok, _ in out["meta_info"]["input_token_logprobs"][start:]]


def _choice_start(engine, choice: str) -> int:
    prompt_ids = engine.tokenizer(PROMPT)["input_ids"]
    full = engine.tokenizer(PROMPT + choice)["input_ids"]
    k = 0
    while k < len(prompt_ids) and prompt_ids[k] == full[k]:
        k += 1
    return k


def _expected(engine, method: str) -> tuple[int, list[float]]:
    cond = [_independent_logprobs(engine, PROMPT + c, _choice_start(engine, c)) for c in CHOICES]
    means = [sum(v) / len(v) for v in cond]
    if method == "token_length_normalized":
        return max(range(len(CHOICES)), key=lambda i: (means[i], -i)), means
    if method == "greedy_token_selection":
        width = max(len(v) for v in cond)
        rows = [v + [means[i]] * (width - len(v)) for i, v in enumerate(cond)]
        alive = list(range(len(rows)))
        for col in range(width):
            best = max(rows[i][col] for i in alive)
            alive = [i for i in alive if rows[i][col] == best]
            if len(alive) == 1:
                break
        return alive[0], means
    uncond = []
    for c, v in zip(CHOICES, cond):
        full = engine.tokenizer(PROMPT + c)["input_ids"]
        alone = full[_choice_start(engine, c) :]
        out = engine.generate(
            input_ids=alone,
            sampling_params={"max_new_tokens": 0},
            return_logprob=True,
            logprob_start_len=0,
            cache_salt="independent-oracle",
        )
        u = [lp or 0.0 for lp, _t, _ in out["meta_info"]["input_token_logprobs"]]
        uncond.append(sum(a - b for a, b in zip(v, u)) / len(v))
    return max(range(len(CHOICES)), key=lambda i: (uncond[i], -i)), uncond


@pytest.mark.parametrize(
    "method", ["token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized"]
)
def test_select_methods_pick_argmax_of_their_scores(method, local, engine):
    @sgl.function
    def prog(s):
        s += PROMPT
        s += sgl.select("animal", choices=CHOICES, choices_method=getattr(sgl, method))

    engine.flush_cache()
    before = engine.get_stats()
    state = prog.run(backend=local)
    meta = state.get_meta_info("animal")
    after = engine.get_stats()
    expected_index, expected_scores = _expected(engine, method)
    assert state["animal"] == CHOICES[expected_index]
    key = (
        "normalized_unconditional_prompt_logprobs"
        if method == "unconditional_likelihood_normalized"
        else "normalized_prompt_logprobs"
    )
    assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(meta[key], expected_scores))
    # The prompt once (one extend), all choices in one batched extend (+ one for the choices alone).
    passes = 3 if method == "unconditional_likelihood_normalized" else 2
    assert after["extend_passes"] - before["extend_passes"] == passes
    assert after["decode_passes"] == before["decode_passes"]
    prompt_tokens = meta["prompt_tokens"]
    for choice, cached in zip(CHOICES, meta["cached_tokens"]):
        assert cached >= _choice_start(engine, choice) - 1 >= prompt_tokens - 2
    engine.idle_integrity()


def test_select_prompt_computed_once(local, engine):
    """Scoring five choices computes the prompt's tokens once, not five times."""
    engine.flush_cache()
    before = engine.get_stats()["computed_prefill_tokens"]
    decision = local.select(PROMPT, CHOICES, sgl.token_length_normalized)
    computed = engine.get_stats()["computed_prefill_tokens"] - before
    prompt_tokens = decision.meta_info["prompt_tokens"]
    choice_tokens = sum(len(lp) for lp in decision.meta_info["input_token_logprobs"])
    assert computed <= prompt_tokens + choice_tokens + 2 * len(CHOICES)
    assert computed < 2 * prompt_tokens + choice_tokens


def test_select_choice_merging_with_prompt(local):
    """A choice that merges with the prompt's last characters is scored over the merged token."""
    decision = local.select("The answer is yes", ["terday", "!"], sgl.token_length_normalized)
    assert all(len(lp) >= 1 for lp in decision.meta_info["input_token_logprobs"])


def test_select_rejects_bad_choices():
    with pytest.raises(ValueError, match="non-empty list"):
        sgl.select("x", choices=[])
    with pytest.raises(ValueError, match="non-empty"):
        sgl.select("x", choices=["a", ""])
    with pytest.raises(TypeError, match="choices_method"):
        sgl.select("x", choices=["a"], choices_method="greedy")


def test_greedy_pads_shorter_choices_with_their_mean():
    from loomlm.lang.choices import greedy_token_selection

    lps = [[(-0.1, 1, None)], [(-0.1, 1, None), (-0.3, 2, None)], [(-0.4, 3, None), (-0.2, 4, None)]]
    decision = greedy_token_selection(["organ", "organism", "antidis"], lps)
    # Tie on the first token; "organ" pads with its mean (-0.1) and beats "organism"'s -0.3.
    assert decision.decision == "organ"
    assert decision.meta_info["greedy_logprob_matrix"][0] == [-0.1, -0.1]
