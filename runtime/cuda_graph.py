"""Decode steps replayed from CUDA graphs captured at a set of batch-size buckets.

A decode step of B requests launches a few hundred small kernels; at small batch, launching them costs
more than running them. `DecodeGraphRunner` captures the whole decode forward (embedding, every layer,
the LM head) once per bucket and replays it: a step copies its inputs into static buffers, pads the
batch to the next bucket and replays one graph.

Static inputs: one [4, max_bs] int64 device tensor (token ids, positions, KV slots, req_to_token rows),
filled from a pinned host buffer with a single copy per step. Padding rows feed token 0 at position 0,
write their K/V to the pool's scratch slot and read row 0 of `req_to_token` (always valid slots), so
they never touch a real request's KV; their logits are dropped. Sequence lengths (positions + 1) are
computed inside the graph. Each bucket's logits live in the graph's memory pool: the returned [B, V]
view is valid until the next replay, which the engine loop guarantees (a step is sampled before the
next forward starts).

`capture=False` runs the same static-buffer path eagerly (no graph): CPU tests use it to check the
padding and buffer plumbing against the ordinary forward.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from loomlm.runtime.forward_context import ForwardBatch, ForwardContext, ForwardMode

if TYPE_CHECKING:
    from loomlm.runtime.batch import ScheduledBatch
    from loomlm.runtime.model_runner import ModelRunner

logger = logging.getLogger(__name__)

IDS, POSITIONS, SLOTS, ROWS = range(4)


def decode_buckets(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_bs (and max_bs itself): padding wastes at most
    15 rows past batch 16, under 2x below."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_bs]
    buckets += list(range(16, max_bs, 16))
    return sorted(set(buckets + [max_bs]))


class DecodeGraphRunner:
    def __init__(self, runner: ModelRunner, max_bs: int, capture: bool = True):
        self.runner = runner
        self.buckets = decode_buckets(max_bs)
        self.max_bs = self.buckets[-1]
        self.capture = capture
        self.replays = 0
        device = runner.device
        self._kv_heads = runner.model_config.num_kv_heads
        self._host = torch.zeros((4, self.max_bs), dtype=torch.int64, pin_memory=device.type == "cuda")
        self._host_np = self._host.numpy()
        self._pad_host(0)
        self._static = self._host.to(device, copy=True)
        self._logits_indices = torch.arange(self.max_bs, dtype=torch.int64, device=device)
        self._steps: dict[int, Callable[[], torch.Tensor]] = {}
        start = time.perf_counter()
        for bs in reversed(self.buckets):  # largest first: smaller graphs reuse its memory pool
            self._steps[bs] = self._build(bs)
        if capture:
            logger.info(
                "captured %d decode CUDA graphs (batch %s) in %.1fs",
                len(self.buckets),
                ",".join(map(str, self.buckets)),
                time.perf_counter() - start,
            )

    def _pad_host(self, first: int) -> None:
        """Host rows `first..` become padding."""
        self._host_np[:, first:] = 0
        self._host_np[SLOTS, first:] = self.runner.kv_pool.scratch_slot

    def _forward(self, bs: int) -> torch.Tensor:
        """The decode forward of the first `bs` static rows -> float32 logits [bs, V]."""
        runner = self.runner
        s = self._static
        positions = s[POSITIONS, :bs]
        batch = ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=s[IDS, :bs],
            positions=positions,
            out_slots=s[SLOTS, :bs],
            req_rows=s[ROWS, :bs],
            prefix_lens=torch.zeros(bs, dtype=torch.int64),
            extend_lens=torch.ones(bs, dtype=torch.int64),
            logits_indices=self._logits_indices[:bs],
        )
        ctx = ForwardContext(batch, runner.kv_pool, runner.req_pool, runner.attn_backend)
        seq_lens = (positions + 1).to(torch.int32)
        ctx.attn_metadata = runner.attn_backend.decode_metadata(s[ROWS, :bs], seq_lens, self._kv_heads)
        return runner.model(ctx)

    def _build(self, bs: int) -> Callable[[], torch.Tensor]:
        if not self.capture:
            return lambda: self._forward(bs)
        # Warm up on a side stream (compiles the Triton kernels, settles the allocator), then capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                self._forward(bs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        pool = getattr(self, "_pool", None)
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
            out = self._forward(bs)
        self._pool = graph.pool()
        torch.cuda.synchronize()

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay

    def can_run(self, batch: ScheduledBatch) -> bool:
        return batch.mode == ForwardMode.DECODE and len(batch.reqs) <= self.max_bs

    def forward(self, batch: ScheduledBatch) -> torch.Tensor:
        """float32 logits [B, V] of a decode batch, from the smallest bucket that holds it."""
        n = len(batch.reqs)
        bs = next(b for b in self.buckets if b >= n)
        host = self._host_np
        host[IDS, :n] = batch.input_ids.numpy()
        host[POSITIONS, :n] = batch.positions.numpy()
        host[SLOTS, :n] = batch.out_slots.numpy()
        host[ROWS, :n] = batch.req_rows.numpy()
        self._pad_host(n)
        self._static[:, :bs].copy_(self._host[:, :bs], non_blocking=True)
        self.replays += 1
        return self._steps[bs]()[:n]
