"""The Hugging Face transformers side of the offline benchmark.

`load_hf_model` builds the reference model from the same weights loomlm serves (the GGUF file through
transformers' GGUF reader, or a safetensors directory), or, for `dummy`, a randomly initialised
`LlamaForCausalLM` of the same shape. `generate_greedy` runs `model.generate` on a left-padded batch with
EOS disabled, so every row yields exactly `max_new_tokens` tokens, and checks that it did.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from loomlm.runtime.models.config import ModelConfig
from loomlm.runtime.models.loader import read_model_config, resolve_model_path

if TYPE_CHECKING:
    from transformers import LlamaConfig


def _llama_config(mc: ModelConfig) -> LlamaConfig:
    """A transformers `LlamaConfig` with the shape of `mc` (only the shape matters for random weights)."""
    from transformers import LlamaConfig

    rope: dict[str, object] = {"rope_type": "default", "rope_theta": mc.rope_theta}
    if mc.rope_scaling is not None:
        scaling = dataclasses.asdict(mc.rope_scaling)
        rope.update({k: v for k, v in scaling.items() if k != "type"}, rope_type=scaling["type"])
    return LlamaConfig(
        vocab_size=mc.vocab_size,
        hidden_size=mc.hidden_size,
        intermediate_size=mc.intermediate_size,
        num_hidden_layers=mc.num_layers,
        num_attention_heads=mc.num_heads,
        num_key_value_heads=mc.num_kv_heads,
        head_dim=mc.head_dim,
        rms_norm_eps=mc.rms_norm_eps,
        max_position_embeddings=mc.max_position_embeddings,
        tie_word_embeddings=mc.tie_word_embeddings,
        attention_bias=mc.attention_bias,
        mlp_bias=mc.mlp_bias,
        rope_parameters=rope,
        bos_token_id=mc.bos_token_id,
        eos_token_id=None,
        pad_token_id=None,
    )


def load_hf_model(
    model_path: str | None,
    load_format: str,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    overrides: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """The transformers model for the benchmark, in eval mode on `device`, with EOS switched off.
    `overrides` (model-config fields, dummy weights only) gives the same shape loomlm builds from
    `json_model_override_args`."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    path = resolve_model_path(model_path)
    if load_format == "dummy":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            config = dataclasses.replace(read_model_config(path), **(overrides or {}))
            model = LlamaForCausalLM(_llama_config(config)).to(dtype)
    elif os.path.isfile(path):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if overrides and load_format != "dummy":
        raise ValueError("model-config overrides need --load-format dummy (a checkpoint has one shape)")
    model.generation_config.eos_token_id = None  # never stop early: every row makes max_new_tokens
    return model.to(device).eval()


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [len(prompts), longest], prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def generate_greedy(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy `generate` of one padded batch; returns the new token ids of each row."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = 0
    ids, mask = left_pad(prompts, pad_id)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, eos_token_id=None, pad_token_id=pad_id
    )
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    new = out[:, ids.shape[1] :].tolist()
    if any(len(row) != max_new_tokens for row in new):
        raise RuntimeError(f"transformers generated {[len(r) for r in new]} tokens, expected {max_new_tokens} per row")
    return new


def generate_in_batches(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """`generate_greedy` over consecutive slices of `batch_size` prompts (batch_size=1: sequential)."""
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        outputs += generate_greedy(model, prompts[start : start + batch_size], max_new_tokens)
    return outputs
