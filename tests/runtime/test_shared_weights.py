"""Models loaded from the same checkpoint share one copy of its weights while any of them is alive; a
different dtype, config override or a rewritten file loads anew, and nothing outlives the last model."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import torch
import transformers

from loomlm.runtime.models import shared_weights
from loomlm.runtime.models.loader import load_model
from loomlm.runtime.tokenizer import load_tokenizer


def _save_tiny_llama(path: Path, seed: int) -> None:
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).save_pretrained(path)


def _same_storage(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pb = dict(b.named_parameters())
    return all(p.data_ptr() == pb[name].data_ptr() for name, p in a.named_parameters())


def test_same_checkpoint_shares_until_the_last_model_goes(tmp_path: Path):
    _save_tiny_llama(tmp_path, seed=0)
    gc.collect()
    live = shared_weights.live_checkpoints()
    a, config_a = load_model(str(tmp_path))
    b, config_b = load_model(str(tmp_path))
    assert config_a == config_b and a is not b and _same_storage(a, b)
    assert torch.equal(a.rotary.cos, b.rotary.cos) and a.rotary.cos.data_ptr() != b.rotary.cos.data_ptr()
    assert shared_weights.live_checkpoints() == live + 1

    # Another dtype or shape is another set of weights.
    c, _ = load_model(str(tmp_path), dtype=torch.bfloat16)
    d, config_d = load_model(str(tmp_path), model_config_override={"max_position_embeddings": 32})
    assert next(c.parameters()).dtype == torch.bfloat16 and config_d.max_position_embeddings == 32
    assert not _same_storage(a, d) and shared_weights.live_checkpoints() == live + 3

    # The first model gone, the second still holds the weights: a third load shares them.
    del a, c, d
    gc.collect()
    e, _ = load_model(str(tmp_path))
    assert _same_storage(b, e) and shared_weights.live_checkpoints() == live + 1
    del b, e
    gc.collect()
    assert shared_weights.live_checkpoints() == live


def test_a_rewritten_checkpoint_is_read_again(tmp_path: Path):
    _save_tiny_llama(tmp_path, seed=0)
    a, _ = load_model(str(tmp_path))
    before = a.embed_tokens.weight.clone()
    _save_tiny_llama(tmp_path, seed=1)
    weights = tmp_path / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a new stamp even on a coarse clock
    b, _ = load_model(str(tmp_path))
    assert not _same_storage(a, b) and not torch.equal(b.embed_tokens.weight, before)
    assert torch.equal(a.embed_tokens.weight, before)  # the running model is untouched


def test_engines_share_the_default_models_weights_and_tokenizer(engine):
    import loomlm

    with loomlm.Engine(max_total_tokens=256, max_running_requests=2) as other:
        assert _same_storage(engine.runner.model, other.runner.model)
        assert other.tokenizer is engine.tokenizer is load_tokenizer(None)
        # Separate KV pools and modules: the two engines only share read-only tensors.
        assert other.runner.kv_pool is not engine.runner.kv_pool and other.runner.model is not engine.runner.model
        prompt = {"max_new_tokens": 6, "temperature": 0}
        assert (
            other.generate("The capital of France is", prompt)["output_ids"]
            == engine.generate("The capital of France is", prompt)["output_ids"]
        )
    engine.idle_integrity()
