"""The engine's greedy tokens and logprobs equal transformers' on the same GGUF weights (float32)."""

from __future__ import annotations

import pytest
import torch

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "List three primary colors:",
    "Water boils at a temperature of",
]


@pytest.fixture
def hf_model(hf_reference_model):
    return hf_reference_model


def test_greedy_tokens_and_logprobs_match_transformers(idle_engine, hf_model):
    tok = idle_engine.tokenizer
    outs = idle_engine.generate(
        PROMPTS, {"max_new_tokens": 32, "temperature": 0, "ignore_eos": True}, return_logprob=True
    )
    for prompt, out in zip(PROMPTS, outs):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            ref = hf_model.generate(
                ids,
                max_new_tokens=32,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                eos_token_id=None,
                pad_token_id=0,
                min_new_tokens=0,
            )
        ref_ids = ref.sequences[0, ids.shape[1] :].tolist()
        assert out["output_ids"] == ref_ids, prompt
        ref_lp = torch.stack([torch.log_softmax(l[0].float(), -1)[t] for l, t in zip(ref.logits, ref_ids)])
        ours = torch.tensor([lp for lp, _tid, _ in out["meta_info"]["output_token_logprobs"]])
        assert torch.allclose(ours, ref_lp, atol=1e-4), (ours - ref_lp).abs().max()
        assert out["meta_info"]["completion_tokens"] == 32
        assert out["meta_info"]["finish_reason"]["type"] == "length"


def test_prompt_logprobs_match_transformers(idle_engine, hf_model):
    prompt = PROMPTS[2]
    ids = idle_engine.tokenizer(prompt)["input_ids"]
    out = idle_engine.generate(
        prompt, {"max_new_tokens": 1, "temperature": 0}, return_logprob=True, logprob_start_len=0, top_logprobs_num=3
    )
    meta = out["meta_info"]
    entries = meta["input_token_logprobs"]
    assert [t for _lp, t, _ in entries] == ids
    assert entries[0][0] is None
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0].float()
    ref = torch.log_softmax(logits, -1)
    expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    ours = torch.tensor([lp for lp, _t, _ in entries[1:]])
    assert torch.allclose(ours, expected, atol=1e-4)
    top = meta["input_top_logprobs"][1:]
    ref_top = torch.topk(ref[:-1], 3, dim=-1)
    assert [[t for _v, t, _ in row] for row in top] == ref_top.indices.tolist()
    # logprob_start_len in the middle of the prompt scores only the tail.
    out2 = idle_engine.generate(prompt, {"max_new_tokens": 1}, return_logprob=True, logprob_start_len=5)
    tail = out2["meta_info"]["input_token_logprobs"]
    assert [t for _lp, t, _ in tail] == ids[5:]
    assert torch.allclose(torch.tensor([lp for lp, _t, _ in tail]), expected[4:], atol=1e-4)


def test_chat_answer_is_real_text(idle_engine):
    prompt = idle_engine.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    out = idle_engine.generate(prompt, {"max_new_tokens": 24, "temperature": 0})
    assert "Paris" in out["text"]
