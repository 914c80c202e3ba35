"""CPU attention through loomlm's C++ kernels (`kernels/cpu_kernels.py`), the default on CPU.

Decode (one query per request) is one kernel call per layer: it stores the new K/V into their slots and
attends over each request's slots straight from the pool (`req_to_token`), float32 inside; the torch
backend needs about fifteen aten ops for the same (casts, gathers, two matmuls, softmax). Short extends
(at most `PER_ROW_MAX_EXTEND` new tokens per request: speculative verify passes, short prompts, a
jump-forward's few tokens) go through the same kernel with one row per new token, whose keys end at its
own position: a verify row then computes exactly what the decode step at that position would, bit for
bit (the projections by oneDNN are row-independent too), so speculation leaves bfloat16 outputs as they
were. Long extends (prefill chunks, mixed batches) are the torch backend's: padded SDPA.

Decode groups that share a cached prefix (`ctx.batch.shared_prefixes`) are attended like any other
request, each member reading the prefix itself: the members read the same keys one after another, from
cache, and the C++ decode loop beats the torch backend's one-read-per-group cascade path with its Python
layer loop. Measured on a 2-core AMD EPYC: `bench prefix --output-len 64` (4 prefixes of 1,088 tokens,
16 requests each) 19.1 s against 22.0 s with the cascade; tree of thought in `bench programs` 3.97 s
against 5.42 s.

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


# Longest extend (new tokens of one request) attended row by row with the decode kernel.
PER_ROW_MAX_EXTEND = 16


@dataclass
class CpuDecodeMetadata:
    """One query row per new token: its request's row of req_to_token and its key count (keys 0 ..
    its own position)."""

    req_rows: torch.Tensor  # [T] int64
    seq_lens: torch.Tensor  # [T] int64


class CpuAttentionBackend(TorchAttentionBackend):
    def __init__(self, scale: float):
        from loomlm.kernels import cpu_kernels

        super().__init__(scale)
        self._kernels = cpu_kernels.load()

    def prepare(self, ctx: ForwardContext) -> None:
        batch = ctx.batch
        if int(batch.extend_lens.max()) > PER_ROW_MAX_EXTEND:
            super().prepare(ctx)
            return
        rows, prefix, ext = batch.req_rows.to(torch.int64), batch.prefix_lens, batch.extend_lens
        if batch.num_tokens == batch.batch_size:  # decode: one row per request
            ctx.attn_metadata = CpuDecodeMetadata(rows, prefix + ext)
            return
        firsts = torch.cumsum(ext, 0) - ext  # each request's first row
        offsets = torch.arange(batch.num_tokens) - torch.repeat_interleave(firsts, ext)
        seq = torch.repeat_interleave(prefix, ext) + offsets + 1
        ctx.attn_metadata = CpuDecodeMetadata(torch.repeat_interleave(rows, ext), seq)

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
