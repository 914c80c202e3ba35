"""Sampling parameters take effect end to end through the engine (the sampler has its own unit tests)."""

from __future__ import annotations

PROMPT = "Write a sentence about cats."


def test_seeded_sampling_is_reproducible_and_batch_independent(idle_engine):
    params = {"max_new_tokens": 16, "temperature": 1.0, "seed": 1234, "ignore_eos": True}
    a = idle_engine.generate(PROMPT, params)
    b = idle_engine.generate(
        [PROMPT, "Other prompt", "And another one"], [params, {"max_new_tokens": 5}, {"max_new_tokens": 9}]
    )[0]
    assert a["output_ids"] == b["output_ids"]
    c = idle_engine.generate(PROMPT, {**params, "seed": 4321})
    assert c["output_ids"] != a["output_ids"]


def test_temperature_matters(idle_engine):
    greedy = idle_engine.generate(PROMPT, {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True})
    hot = [
        idle_engine.generate(PROMPT, {"max_new_tokens": 16, "temperature": 1.5, "seed": s, "ignore_eos": True})
        for s in range(3)
    ]
    assert any(h["output_ids"] != greedy["output_ids"] for h in hot)
    top_k1 = idle_engine.generate(
        PROMPT, {"max_new_tokens": 16, "temperature": 1.5, "top_k": 1, "seed": 0, "ignore_eos": True}
    )
    assert top_k1["output_ids"] == greedy["output_ids"]


def test_stop_string_excluded_and_reported(idle_engine):
    base = idle_engine.generate("Count: 1, 2, 3, 4, 5,", {"max_new_tokens": 20, "temperature": 0})
    assert " 8" in base["text"]
    out = idle_engine.generate("Count: 1, 2, 3, 4, 5,", {"max_new_tokens": 20, "temperature": 0, "stop": [" 8"]})
    assert out["text"] == base["text"][: base["text"].index(" 8")]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": " 8"}


def test_stop_token_ids_and_ignore_eos(idle_engine):
    base = idle_engine.generate("Count: 1, 2, 3, 4, 5,", {"max_new_tokens": 12, "temperature": 0})
    stop_id = base["output_ids"][3]
    out = idle_engine.generate(
        "Count: 1, 2, 3, 4, 5,", {"max_new_tokens": 12, "temperature": 0, "stop_token_ids": [stop_id]}
    )
    assert out["output_ids"] == base["output_ids"][: base["output_ids"].index(stop_id) + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    chat = idle_engine.apply_chat_template([{"role": "user", "content": "Say hi."}])
    ends = idle_engine.generate(chat, {"max_new_tokens": 64, "temperature": 0})
    assert ends["meta_info"]["finish_reason"]["type"] == "stop"
    assert ends["output_ids"][-1] in idle_engine.eos_token_ids
    n = len(ends["output_ids"])
    longer = idle_engine.generate(chat, {"max_new_tokens": n + 5, "temperature": 0, "ignore_eos": True})
    assert len(longer["output_ids"]) == n + 5
    at_least = idle_engine.generate(chat, {"max_new_tokens": n + 5, "temperature": 0, "min_new_tokens": n + 2})
    assert len(at_least["output_ids"]) >= n + 2


def test_n_returns_distinct_samples(idle_engine):
    outs = idle_engine.generate(
        PROMPT, {"max_new_tokens": 12, "temperature": 1.0, "n": 3, "seed": 7, "ignore_eos": True}
    )
    assert len(outs) == 3
    assert len({tuple(o["output_ids"]) for o in outs}) == 3


def test_penalties_change_repetitive_output(idle_engine):
    prompt = "apple apple apple apple apple apple apple"
    base = idle_engine.generate(prompt, {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    for key, value in (("repetition_penalty", 2.0), ("frequency_penalty", 2.0), ("presence_penalty", 2.0)):
        pen = idle_engine.generate(prompt, {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True, key: value})
        assert pen["output_ids"] != base["output_ids"], key


def test_top_p_and_min_p_narrow_sampling(idle_engine):
    greedy = idle_engine.generate(PROMPT, {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    for key, value in (("top_p", 1e-6), ("min_p", 0.999)):
        out = idle_engine.generate(
            PROMPT, {"max_new_tokens": 12, "temperature": 2.0, "seed": 3, "ignore_eos": True, key: value}
        )
        assert out["output_ids"] == greedy["output_ids"], key
