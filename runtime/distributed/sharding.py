"""Slice a loaded Llama-family model down to one tensor-parallel rank's share (see plan.py).

Column-parallel: the fused QKV rows of the rank's query and KV heads, the fused gate/up rows of its
intermediate columns, the embedding (and an untied LM head) rows of its vocabulary range. Row-parallel:
the output and down projections' input columns that match; their biases stay on rank 0 only, so the
all-reduce adds each once. Every slice is a new tensor: weights shared with other engines in the process
(`shared_weights.py`) are never written.
"""

from __future__ import annotations

import torch
from torch import nn

from loomlm.runtime.distributed.plan import TensorParallelPlan


def _rows(t: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
    return torch.cat([t[a:b] for a, b in ranges], dim=0).contiguous()


def _replace(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    setattr(module, name, None if value is None else nn.Parameter(value, requires_grad=False))


def _shard_linear(linear: nn.Linear, rows: list[tuple[int, int]] | None, cols: tuple[int, int] | None, rank: int):
    """Keep output rows `rows` (column parallel) or input columns `cols` (row parallel)."""
    weight, bias = linear.weight.data, None if linear.bias is None else linear.bias.data
    if rows is not None:
        _replace(linear, "weight", _rows(weight, rows))
        _replace(linear, "bias", None if bias is None else _rows(bias, rows))
    else:
        a, b = cols
        _replace(linear, "weight", weight[:, a:b].contiguous())
        _replace(linear, "bias", bias if rank == 0 or bias is None else torch.zeros_like(bias))
    linear.out_features, linear.in_features = linear.weight.shape


def shard_llama(model: nn.Module, plan: TensorParallelPlan) -> None:
    """Slice `model` (a LlamaForCausalLM with full weights) in place to `plan`'s share."""
    config = model.config
    D, q_size, kv_size, inter = config.head_dim, config.q_size, config.kv_size, config.intermediate_size
    (q0, q1), (k0, k1), (i0, i1) = plan.q_heads, plan.kv_heads, plan.intermediate
    qkv_rows = [
        (q0 * D, q1 * D),
        (q_size + k0 * D, q_size + k1 * D),
        (q_size + kv_size + k0 * D, q_size + kv_size + k1 * D),
    ]
    for layer in model.layers:
        _shard_linear(layer.attn.qkv_proj, qkv_rows, None, plan.rank)
        _shard_linear(layer.attn.o_proj, None, (q0 * D, q1 * D), plan.rank)
        layer.attn.num_heads, layer.attn.num_kv_heads = plan.num_heads, plan.num_kv_heads
        _shard_linear(layer.mlp.gate_up_proj, [(i0, i1), (inter + i0, inter + i1)], None, plan.rank)
        _shard_linear(layer.mlp.down_proj, None, (i0, i1), plan.rank)
    v0, v1 = plan.vocab
    embed = model.embed_tokens
    _replace(embed, "weight", embed.weight.data[v0:v1].contiguous())
    embed.num_embeddings = v1 - v0
    if model.lm_head is not None:
        _shard_linear(model.lm_head, [(v0, v1)], None, plan.rank)
