"""`python -m loomlm.bench export-hf`: the default model as a Hugging Face folder that a peer loads as is."""

from __future__ import annotations

import torch

from loomlm.bench.__main__ import main as bench_main


def test_export_is_the_same_model_as_the_gguf(tmp_path, hf_reference_model, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "hf"
    assert bench_main(["export-hf", "--out", str(out), "--dtype", "float32"]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, hf_reference_model(ids).logits)
    again = AutoTokenizer.from_pretrained(out)
    assert again("Hello world")["input_ids"] == tokenizer("Hello world")["input_ids"]
    assert again.chat_template == tokenizer.chat_template
