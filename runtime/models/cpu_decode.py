"""A CPU decode step's decoder layers in one C++ call (`kernels/cpu/decode_layers.cpp`).

On the `cpu` attention backend, a decode batch (one new token per request; or a short extend, which that
backend attends row by row as decode rows) runs every layer through
`DecodeLayers.run`: the same fused ops, attention kernel and projection ops as the
Python loop of `LlamaForCausalLM.forward`, minus ~300 Python calls per token (~1 ms of a 5-10 ms step at
batch 1). Each projection is described by its module's kind: a plain `nn.Linear`, oneDNN's packed
weight (`PackedLinear`), int4 groups (`Int4Linear`) or int8 rows (`Int8Linear`).

The plan is built once per (model, KV pool) and kept on the model; changing the model's projections, op
set or tensor-parallel split drops it (`LlamaForCausalLM.forget_decode_plan`). Anything the C++ loop
does not cover (tensor parallelism, another op set or attention backend, an unknown projection module,
a batch above a quantized layer's kernel rows) takes the Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from loomlm.runtime.attention.cpu_backend import CpuDecodeMetadata
from loomlm.runtime.models.cpu_linear import PackedLinear
from loomlm.runtime.models.int4_linear import GROUP, Int4Linear
from loomlm.runtime.models.int4_linear import KERNEL_MAX_ROWS as INT4_MAX_ROWS
from loomlm.runtime.models.int8_linear import KERNEL_MAX_ROWS as INT8_MAX_ROWS
from loomlm.runtime.models.int8_linear import Int8Linear
from loomlm.runtime.models.ops import CpuOps

if TYPE_CHECKING:
    from loomlm.runtime.forward_context import ForwardContext
    from loomlm.runtime.memory_pool import KVPool
    from loomlm.runtime.models.llama import LlamaForCausalLM

# Kinds as decode_layers.h numbers them.
DENSE, ONEDNN, INT4, INT8 = 0, 1, 2, 3
UNLIMITED = 1 << 62


@dataclass(frozen=True)
class DecodePlan:
    layers: Any  # the C++ DecodeLayers, holding the KV pool's buffers
    max_rows: int  # largest decode batch the plan's projections run as their modules would


def linear_spec(module: nn.Module) -> tuple[tuple[int, torch.Tensor, Any, Any, int], int] | None:
    """(kind, weight, scales, bias, group) and the most rows it runs like its module, or None."""
    if isinstance(module, PackedLinear):
        return (ONEDNN, module.packed, None, module.bias, 0), UNLIMITED
    if isinstance(module, Int4Linear):
        packed, scales_zeros = module.kernel_operands
        return (INT4, packed, scales_zeros, module.bias, GROUP), INT4_MAX_ROWS
    if isinstance(module, Int8Linear):
        return (INT8, module.qweight, module.scales, module.bias, 0), INT8_MAX_ROWS
    if type(module) is nn.Linear:
        return (DENSE, module.weight, None, module.bias, 0), UNLIMITED
    return None


def build_plan(model: LlamaForCausalLM, kv_pool: KVPool, kernels: Any) -> DecodePlan | None:
    config = model.config
    layers = kernels.DecodeLayers(
        config.num_heads, config.num_kv_heads, config.head_dim, config.rms_norm_eps, config.head_dim**-0.5
    )
    max_rows = UNLIMITED
    for i, layer in enumerate(model.layers):
        specs = []
        for module in (layer.attn.qkv_proj, layer.attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            spec = linear_spec(module)
            if spec is None:
                return None
            specs.append(spec[0])
            max_rows = min(max_rows, spec[1])
        layers.add_layer(
            layer.input_norm.weight, layer.post_attn_norm.weight, specs, kv_pool.k_buffers[i], kv_pool.v_buffers[i]
        )
    return DecodePlan(layers, max_rows)


def plan_for(model: LlamaForCausalLM, ctx: ForwardContext) -> DecodePlan | None:
    """The model's plan for this forward, or None where the Python loop must run it."""
    ops = model.ops
    if model.tp is not None or not isinstance(ops, CpuOps) or not isinstance(ctx.attn_metadata, CpuDecodeMetadata):
        return None
    cached = model.decode_plan  # (the pool it was built for, the plan or None: not coverable)
    if cached is None or cached[0] is not ctx.kv_pool:
        cached = model.decode_plan = (ctx.kv_pool, build_plan(model, ctx.kv_pool, ops.kernels))
    plan = cached[1]
    if plan is None or ctx.batch.num_tokens > plan.max_rows:
        return None
    return plan


def run_layers(plan: DecodePlan, h: torch.Tensor, rope: Any, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer over h [B, hidden]: (the last MLP output, the residual before it)."""
    positions, cos, sin = rope
    md: CpuDecodeMetadata = ctx.attn_metadata
    out, residual = plan.layers.run(
        h, positions, cos, sin, ctx.batch.out_slots, ctx.req_to_token_pool.req_to_token, md.req_rows, md.seq_lens
    )
    return out, residual
