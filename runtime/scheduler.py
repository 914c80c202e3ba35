"""Scheduler: admission, KV slot accounting and batch building (FCFS, prefill first).

Each step is either an EXTEND batch of newly admitted requests (prefill) or a DECODE batch of every
running request. A request is admitted only when the pool can hold its worst case
(prompt + max_new_tokens - 1 slots); the part not yet allocated is kept as a reservation, so a running
request can never run out of slots. (Cache-aware policies, chunked prefill and retraction under memory
pressure build on this in the RadixAttention issue.)
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from loomlm.runtime.forward_context import ForwardMode
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.request import FinishReason, Req, ReqStatus


@dataclass
class ScheduledBatch:
    mode: ForwardMode
    reqs: list[Req]
    input_ids: torch.Tensor        # [T] int64
    positions: torch.Tensor        # [T] int64
    out_slots: torch.Tensor        # [T] int64
    req_rows: torch.Tensor         # [B] int64
    prefix_lens: torch.Tensor      # [B] int64
    extend_lens: torch.Tensor      # [B] int64
    logits_indices: torch.Tensor   # [N] int64, rows of the flattened tokens that need logits
    sample_rows: torch.Tensor      # [B] int64, row of logits (0..N-1) each request samples from
    # Per request: (first logits row, count) of prompt-logprob rows; count 0 when none were asked.
    input_logprob_spans: list[tuple[int, int]]


class Scheduler:
    def __init__(self, kv_pool: KVPool, req_pool: ReqToTokenPool, max_prefill_tokens: int):
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: collections.deque[Req] = collections.deque()
        self.running: list[Req] = []
        self.reserved_total = 0

    # ---- queue management -------------------------------------------------------------------
    def add(self, req: Req) -> None:
        req.status = ReqStatus.WAITING
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def worst_case_slots(self, req: Req) -> int:
        return len(req.prompt_ids) + max(req.max_new_tokens - 1, 0)

    # ---- batch building ----------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        admitted = self._admit()
        if admitted:
            return self._build_extend(admitted)
        if self.running:
            return self._build_decode(self.running)
        return None

    def _admit(self) -> list[Req]:
        admitted: list[Req] = []
        budget = self.max_prefill_tokens
        while self.waiting:
            req = self.waiting[0]
            need = self.worst_case_slots(req)
            if admitted and len(req.prompt_ids) > budget:
                break
            if self.req_pool.available() == 0 or self.kv_pool.available() - self.reserved_total < need:
                break
            self.waiting.popleft()
            req.row = self.req_pool.alloc()
            slots = self.kv_pool.alloc(len(req.prompt_ids))
            self.req_pool.req_to_token[req.row, :len(req.prompt_ids)] = slots.to(torch.int32)
            req.reserved_slots = need - len(req.prompt_ids)
            self.reserved_total += req.reserved_slots
            req.status = ReqStatus.RUNNING
            budget -= len(req.prompt_ids)
            admitted.append(req)
            self.running.append(req)
        return admitted

    def _build_extend(self, reqs: list[Req]) -> ScheduledBatch:
        table = self.req_pool.req_to_token
        ids, positions, slots, logits_idx, sample_rows, spans = [], [], [], [], [], []
        offset = 0
        for req in reqs:
            n = len(req.prompt_ids)
            ids.append(torch.tensor(req.prompt_ids, dtype=torch.int64))
            positions.append(torch.arange(n, dtype=torch.int64))
            slots.append(table[req.row, :n].to(torch.int64))
            start = self._input_logprob_start(req)
            if start is None:
                spans.append((len(logits_idx), 0))
                logits_idx.append(offset + n - 1)
            else:
                # Rows start-1 .. n-2 score prompt tokens start .. n-1; row n-1 samples the next token.
                spans.append((len(logits_idx), n - start))
                logits_idx.extend(range(offset + start - 1, offset + n))
            sample_rows.append(len(logits_idx) - 1)
            offset += n
        return ScheduledBatch(
            mode=ForwardMode.EXTEND, reqs=reqs, input_ids=torch.cat(ids), positions=torch.cat(positions),
            out_slots=torch.cat(slots), req_rows=torch.tensor([r.row for r in reqs], dtype=torch.int64),
            prefix_lens=torch.zeros(len(reqs), dtype=torch.int64),
            extend_lens=torch.tensor([len(r.prompt_ids) for r in reqs], dtype=torch.int64),
            logits_indices=torch.tensor(logits_idx, dtype=torch.int64),
            sample_rows=torch.tensor(sample_rows, dtype=torch.int64), input_logprob_spans=spans)

    @staticmethod
    def _input_logprob_start(req: Req) -> int | None:
        """First prompt position whose logprob is scored (>= 1; position 0 has none), or None."""
        opts = req.logprobs
        if not opts.return_logprob or opts.logprob_start_len < 0:
            return None
        start = max(opts.logprob_start_len, 1)
        return start if start < len(req.prompt_ids) else None

    def _build_decode(self, reqs: list[Req]) -> ScheduledBatch:
        B = len(reqs)
        rows = torch.tensor([r.row for r in reqs], dtype=torch.int64)
        kv_lens = torch.tensor([r.kv_len for r in reqs], dtype=torch.int64)
        slots = self.kv_pool.alloc(B)
        self.req_pool.req_to_token[rows, kv_lens] = slots.to(torch.int32)
        for req in reqs:
            req.reserved_slots -= 1
        self.reserved_total -= B
        arange = torch.arange(B, dtype=torch.int64)
        return ScheduledBatch(
            mode=ForwardMode.DECODE, reqs=list(reqs),
            input_ids=torch.tensor([r.output_ids[-1] for r in reqs], dtype=torch.int64),
            positions=kv_lens, out_slots=slots, req_rows=rows, prefix_lens=kv_lens,
            extend_lens=torch.ones(B, dtype=torch.int64), logits_indices=arange, sample_rows=arange,
            input_logprob_spans=[(0, 0)] * B)

    def after_forward(self, batch: ScheduledBatch) -> None:
        """The batch's new tokens now have K/V in the pool."""
        for req, n in zip(batch.reqs, batch.extend_lens.tolist()):
            req.kv_len += n

    # ---- finishing ---------------------------------------------------------------------------
    def finish(self, req: Req, reason: FinishReason) -> None:
        """Release everything the request holds; safe for waiting and running requests."""
        req.finish_reason = reason
        if req.status == ReqStatus.WAITING:
            self.waiting.remove(req)
        elif req.status == ReqStatus.RUNNING:
            self.running.remove(req)
            self._release(req)
        req.status = ReqStatus.FINISHED

    def _release(self, req: Req) -> None:
        if req.row >= 0:
            slots = self.req_pool.req_to_token[req.row, :req.kv_len].to(torch.int64)
            self.kv_pool.free(slots)
        self.reserved_total -= req.reserved_slots
        req.reserved_slots = 0
        req.kv_len = 0
        if req.row >= 0:
            self.req_pool.free(req.row)
            req.row = -1

    def find(self, rid: str) -> Req | None:
        for req in list(self.waiting) + self.running:
            if req.rid == rid:
                return req
        return None

    def check_integrity(self) -> None:
        self.kv_pool.check_integrity()
        self.req_pool.check_integrity()
        used = sum(r.kv_len for r in self.running)
        if self.kv_pool.used() != used:
            raise AssertionError(f"KV pool has {self.kv_pool.used()} slots in use, requests own {used}")
        if self.reserved_total != sum(r.reserved_slots for r in self.running):
            raise AssertionError("reserved slot count disagrees with the running requests")
        if self.req_pool.available() != self.req_pool.max_requests - len(self.running):
            raise AssertionError("request rows in use disagree with the running requests")
