"""CPU attention through loomlm's C++ kernels (`kernels/cpu_kernels.py`), the default on CPU.

Decode (one query per request) is one kernel call per layer: it stores the new K/V into their slots and
attends over each request's slots straight from the pool (`req_to_token`), float32 inside; the torch
backend needs about fifteen aten ops for the same (casts, gathers, two matmuls, softmax). Everything
else is the torch backend's: extend batches (prefill, verify passes, mixed batches) go through padded
SDPA, and decode batches with shared prefixes keep their one-read-per-group cascade path, because reading
a long common prefix once per group is worth more than the fused call.

`choose_cpu_attention` picks this backend or, when the kernels cannot be built here, the torch backend,
and says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from loomlm.runtime.attention.torch_backend import TorchAttentionBackend
from loomlm.runtime.forward_context import ForwardContext

logger = logging.getLogger(__name__)


@dataclass
class CpuDecodeMetadata:
    req_rows: torch.Tensor  # [B] int64, rows of req_to_token
    seq_lens: torch.Tensor  # [B] int64, keys per request (the new token included)


class CpuAttentionBackend(TorchAttentionBackend):
    def __init__(self, scale: float):
        from loomlm.kernels import cpu_kernels

        super().__init__(scale)
        self._kernels = cpu_kernels.load()

    def prepare(self, ctx: ForwardContext) -> None:
        batch = ctx.batch
        if batch.num_tokens == batch.batch_size and not batch.shared_prefixes:
            seq = batch.prefix_lens + batch.extend_lens
            ctx.attn_metadata = CpuDecodeMetadata(batch.req_rows.to(torch.int64), seq.to(torch.int64))
            return
        super().prepare(ctx)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, ctx: ForwardContext
    ) -> torch.Tensor:
        md = ctx.attn_metadata
        if not isinstance(md, CpuDecodeMetadata):
            return super().forward(q, k, v, layer_id, ctx)
        pool = ctx.kv_pool
        return self._kernels.decode_attention(
            q,
            k,
            v,
            pool.k_buffers[layer_id],
            pool.v_buffers[layer_id],
            ctx.batch.out_slots,
            ctx.req_to_token_pool.req_to_token,
            md.req_rows,
            md.seq_lens,
            self.scale,
        )


def choose_cpu_attention(requested: str | None) -> str:
    """The attention backend to run on CPU: `requested` if given (`cpu` must build), else `cpu` when the
    kernels build here and `torch` otherwise (logged with the reason)."""
    if requested not in (None, "cpu"):
        return requested
    from loomlm.kernels import cpu_kernels

    why = cpu_kernels.unavailable_reason()
    if why is None:
        return "cpu"
    if requested == "cpu":
        raise ValueError(f"attention_backend 'cpu' is unavailable: {why}")
    logger.warning("CPU kernels unavailable (%s); attention backend torch", why)
    return "torch"
