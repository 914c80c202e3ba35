"""ScheduledBatch: what one forward pass computes, and the builders of extend and decode batches.

A ScheduledBatch is the forward's tensors (`ForwardBatch`, declared once in forward_context.py) plus what
the engine needs around the forward: the requests, which of them sample, the prompt-logprob spans, and
the request rows the scheduler freed since the previous batch (the sampler ends them before it claims
rows for the batch's new requests).

An extend batch holds, per request, a contiguous run `[start, end)` of its fill tokens (a whole prompt,
the part of it past a cached prefix, or one chunk). Logits are kept only for the rows that are needed:
prompt positions whose logprobs were asked for, and the last fill token of each request that samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from loomlm.runtime.forward_context import ForwardBatch, ForwardMode, SharedPrefix
from loomlm.runtime.request import Req

if TYPE_CHECKING:
    from loomlm.runtime.speculative import Draft


@dataclass
class ExtendItem:
    req: Req
    start: int  # first fill position computed (== tokens already in the pool)
    end: int  # one past the last; the request samples iff end == len(fill_ids)


@dataclass
class LogprobSpan:
    first_row: int  # first row of the logits tensor holding prompt-logprob rows of this request
    count: int  # number of rows (0: none this step)
    first_target: int  # prompt position scored by the first row


@dataclass(kw_only=True)
class ScheduledBatch(ForwardBatch):
    """One step's forward tensors (on the host) and what the engine needs around the forward."""

    reqs: list[Req]
    sample_index: torch.Tensor  # [S] int64, batch index of each request that samples this step
    sample_rows: torch.Tensor  # [S] int64, its row of the logits (0..N-1)
    logprob_spans: list[LogprobSpan] | None  # per request (extend only)
    released_rows: tuple[int, ...] = ()  # request rows freed since the previous batch (set by schedule())
    mixed_decodes: int = 0  # extend only: the last this many requests are running decodes (one token each)
    drafts: list[Draft] | None = None  # a verify pass (EXTEND mode): each request's last token + its draft
    settled_drafts: int = 0  # verify: requests whose draft slots were taken or freed (in batch order)

    @property
    def is_verify(self) -> bool:
        return self.drafts is not None

    def draft_slots(self, i: int) -> torch.Tensor:
        """Verify pass: the KV slots [len(draft i)] of request i's draft tokens."""
        start = int(self.sample_rows[i]) + 1
        return self.out_slots[start : start + len(self.drafts[i])]

    @property
    def sampling_reqs(self) -> list[Req]:
        if self.mode == ForwardMode.DECODE or self.drafts is not None:
            return self.reqs
        return [self.reqs[i] for i in self.sample_index.tolist()]


def build_extend(items: list[ExtendItem], req_to_token: torch.Tensor, mixed_decodes: int = 0) -> ScheduledBatch:
    ids, positions, slots, logits_idx, sample_index, sample_rows, spans = [], [], [], [], [], [], []
    offset = 0
    for b, item in enumerate(items):
        req, a, e = item.req, item.start, item.end
        fill = req.fill_ids
        n_prompt = len(req.prompt_ids)
        ids.append(torch.tensor(fill[a:e], dtype=torch.int64))
        positions.append(torch.arange(a, e, dtype=torch.int64))
        slots.append(req_to_token[req.row, a:e].to(torch.int64))
        # Row p scores prompt token p + 1: targets still owed that this run's rows can score.
        first_target = max(req.scored_upto, a + 1)
        last_target = min(e, n_prompt - 1)
        count = max(last_target - first_target + 1, 0)
        spans.append(LogprobSpan(len(logits_idx), count, first_target))
        if count:
            row0 = offset + (first_target - 1 - a)
            logits_idx.extend(range(row0, row0 + count))
        if e == len(fill):
            sample_index.append(b)
            sample_rows.append(len(logits_idx))
            logits_idx.append(offset + e - a - 1)
        offset += e - a
    reqs = [item.req for item in items]
    return ScheduledBatch(
        mode=ForwardMode.EXTEND,
        reqs=reqs,
        input_ids=torch.cat(ids),
        positions=torch.cat(positions),
        out_slots=torch.cat(slots),
        req_rows=torch.tensor([r.row for r in reqs], dtype=torch.int64),
        prefix_lens=torch.tensor([item.start for item in items], dtype=torch.int64),
        extend_lens=torch.tensor([item.end - item.start for item in items], dtype=torch.int64),
        logits_indices=torch.tensor(logits_idx, dtype=torch.int64),
        sample_index=torch.tensor(sample_index, dtype=torch.int64),
        sample_rows=torch.tensor(sample_rows, dtype=torch.int64),
        logprob_spans=spans,
        mixed_decodes=mixed_decodes,
    )


def build_decode(
    reqs: list[Req],
    rows: torch.Tensor,
    kv_lens: torch.Tensor,
    slots: torch.Tensor,
    shared_prefixes: tuple[SharedPrefix, ...] = (),
) -> ScheduledBatch:
    """rows, kv_lens, slots: [B] int64; each request feeds its last output token at position kv_len."""
    B = len(reqs)
    arange = torch.arange(B, dtype=torch.int64)
    return ScheduledBatch(
        mode=ForwardMode.DECODE,
        reqs=list(reqs),
        input_ids=torch.tensor([r.output_ids[-1] for r in reqs], dtype=torch.int64),
        positions=kv_lens,
        out_slots=slots,
        req_rows=rows,
        prefix_lens=kv_lens,
        extend_lens=torch.ones(B, dtype=torch.int64),
        logits_indices=arange,
        sample_index=arange,
        sample_rows=arange,
        logprob_spans=None,
        shared_prefixes=shared_prefixes,
    )


def build_verify(
    reqs: list[Req], drafts: list[Draft], kv_lens: list[int], req_to_token: torch.Tensor
) -> ScheduledBatch:
    """A speculative verify pass: request b feeds its last output token and draft b at positions
    kv_lens[b] .. kv_lens[b] + len(draft b), whose slots are already in its `req_to_token` row. Every
    row gives logits (row j of a request predicts the token after its j-th fed token)."""
    counts = [1 + len(d) for d in drafts]
    ids: list[int] = []
    positions, slots = [], []
    for req, draft, kv_len, n in zip(reqs, drafts, kv_lens, counts):
        ids.append(req.output_ids[-1])
        ids.extend(draft.tokens)
        positions.append(torch.arange(kv_len, kv_len + n, dtype=torch.int64))
        slots.append(req_to_token[req.row, kv_len : kv_len + n].to(torch.int64))
    T = len(ids)
    extend_lens = torch.tensor(counts, dtype=torch.int64)
    B = len(reqs)
    return ScheduledBatch(
        mode=ForwardMode.EXTEND,
        reqs=list(reqs),
        input_ids=torch.tensor(ids, dtype=torch.int64),
        positions=torch.cat(positions),
        out_slots=torch.cat(slots),
        req_rows=torch.tensor([r.row for r in reqs], dtype=torch.int64),
        prefix_lens=torch.tensor(kv_lens, dtype=torch.int64),
        extend_lens=extend_lens,
        logits_indices=torch.arange(T, dtype=torch.int64),
        sample_index=torch.arange(B, dtype=torch.int64),
        sample_rows=torch.cumsum(extend_lens, 0) - extend_lens,  # each request's first row
        logprob_spans=None,  # a verify pass scores no prompt tokens
        drafts=list(drafts),
    )
