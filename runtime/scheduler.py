"""Scheduler: admission with prefix reuse, chunked prefill, decode batches, and memory pressure.

Each step is an EXTEND batch (the continuing chunk of a long prompt, then newly admitted requests in
policy order, within a per-step token budget) or a DECODE batch of every request past its prefill.
While a long prompt is being chunked, extend and decode steps alternate so running requests keep going.

Admission matches the request's fill tokens against the radix tree, locks the match and allocates slots
only for the new tokens. It is optimistic about output lengths: a request is admitted when the free and
evictable slots cover its new tokens plus `new_token_ratio` of everyone's remaining `max_new_tokens`.
When a decode step then finds too few slots, the cache is evicted first, and if that is not enough
running requests are retracted (lowest priority, then least progress first): their computed tokens go
into the tree, they return to the queue with their output so far, and are recomputed from the cached
prefix later.

The scheduler knows nothing of sampling or grammars: the request rows it frees (finish, retraction,
requeue) are handed over with the next batch (`ScheduledBatch.released_rows`), and the sampler, which
claims a row for each request new to it, ends them there.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import torch

from loomlm.runtime.batch import ExtendItem, ScheduledBatch, build_decode, build_extend, build_verify
from loomlm.runtime.forward_context import ForwardMode, SharedPrefix
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.policy import IN_BATCH_SHARE_MIN, SchedulePolicy
from loomlm.runtime.prefix_cache import PrefixCache
from loomlm.runtime.radix_cache import common_prefix_len
from loomlm.runtime.request import FinishReason, Req, ReqStatus
from loomlm.runtime.speculative import Drafter
from loomlm.runtime.stats import EngineStats

INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.15
NEW_TOKEN_RATIO_DECAY = (INIT_NEW_TOKEN_RATIO - MIN_NEW_TOKEN_RATIO) / 600  # per decode step
RETRACT_RATIO_STEP = 0.2
CLIP_MAX_NEW_TOKENS = 4096  # a huge max_new_tokens should not block admission forever


class Scheduler:
    def __init__(
        self,
        kv_pool: KVPool,
        req_pool: ReqToTokenPool,
        *,
        prefill_budget: int,
        chunked_prefill: bool,
        policy: str,
        enable_cache: bool,
        stats: EngineStats,
        clock: Callable[[], float] = time.perf_counter,
        mix_decodes: bool = False,
        mixed_budget: int | None = None,
        drafter: Drafter | None = None,
    ):
        """`mix_decodes` (`enable_mixed_chunk`): an extend step also carries the running requests'
        decode tokens, so they do not wait while a prompt is prefilled; such a step prefills at most
        `mixed_budget` prompt tokens (`mixed_prefill_tokens`), so the decodes keep a short step time.
        `drafter` (speculative decoding): decode steps become verify passes of the drafts it proposes."""
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.prefill_budget = prefill_budget
        self.chunked_prefill = chunked_prefill
        self.mix_decodes = mix_decodes
        self.mixed_budget = mixed_budget
        self.drafter = drafter
        self.cache = PrefixCache(kv_pool, req_pool, enable_cache)
        self.policy = SchedulePolicy(policy, enable_cache)
        self.stats = stats
        self.clock = clock  # for queue times (injectable: tests do not read the wall clock)
        self.waiting: list[Req] = []
        self.running: list[Req] = []  # past their prefill: decode every step
        self.chunked: Req | None = None  # prompt being prefilled chunk by chunk
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self._decode_turn = False
        self._arrivals = itertools.count()
        self._decode_groups: tuple[SharedPrefix, ...] | None = None  # None: running changed, recompute
        self._released_rows: list[int] = []  # freed since the last batch; handed over with the next one

    # ---- queue management -------------------------------------------------------------------
    def add(self, req: Req) -> None:
        req.arrival = next(self._arrivals)
        req.queued_at = self.clock()
        req.status = ReqStatus.WAITING
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked)

    def holders(self) -> list[Req]:
        """Requests that own a row and KV slots."""
        return self.running + ([self.chunked] if self.chunked is not None else [])

    # ---- batch building ----------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        """The next batch (None: nothing can run), carrying the rows freed since the previous batch."""
        batch = self._next_batch()
        if batch is not None:
            batch.released_rows, self._released_rows = tuple(self._released_rows), []
        return batch

    @property
    def pending_released_rows(self) -> tuple[int, ...]:
        """Rows freed since the last batch (the next batch will carry them)."""
        return tuple(self._released_rows)

    def _next_batch(self) -> ScheduledBatch | None:
        if self._decode_turn and self.running:
            self._decode_turn = False
            return self._schedule_decode()
        batch = self._schedule_extend() if (self.waiting or self.chunked) else None
        if batch is not None:
            return batch
        if self.running:
            return self._schedule_decode()
        return None

    def _estimate(self, req: Req) -> int:
        return math.ceil(min(req.remaining_new_tokens, CLIP_MAX_NEW_TOKENS) * self.new_token_ratio)

    def _reserved(self) -> int:
        """Slots the current holders are expected to need from now on."""
        total = sum(self._estimate(r) for r in self.running)
        if self.chunked is not None:
            c = self.chunked
            total += len(c.prompt_ids) + len(c.output_ids) - c.kv_len + self._estimate(c)
        return total

    def _schedule_extend(self) -> ScheduledBatch | None:
        budget = self.prefill_budget
        if self.mix_decodes and self.running and self.mixed_budget is not None:
            budget = min(budget, self.mixed_budget)
        items: list[ExtendItem] = []
        if self.chunked is not None:
            item = self._continue_chunk(budget)
            if item is not None:
                items.append(item)
                budget -= item.end - item.start
        admitted: list[Req] = []
        if self.waiting and budget > 0:
            admitted = self._admit(items, budget)
            if admitted:
                taken = set(map(id, admitted))
                self.waiting = [r for r in self.waiting if id(r) not in taken]
                self.policy.note_passed_over(self.waiting, admitted)
        if not items:
            return None
        decodes = self._mixed_decodes(items) if self.mix_decodes else []
        # Without mixing, a prompt still being chunked lets the running requests decode every other step.
        self._decode_turn = self.chunked is not None and not decodes
        return build_extend(items + decodes, self.req_pool.req_to_token, mixed_decodes=len(decodes))

    def _mixed_decodes(self, items: list[ExtendItem]) -> list[ExtendItem]:
        """One decode token for every running request not already in this extend (none when the pool
        cannot give them a slot each, even after evicting cached prefixes: then they decode next step)."""
        taken = {id(item.req) for item in items}
        reqs = [r for r in self.running if id(r) not in taken]
        if not reqs or not self.cache.make_room(len(reqs)):
            return []
        rows = torch.tensor([r.row for r in reqs], dtype=torch.int64)
        kv_lens = torch.tensor([r.kv_len for r in reqs], dtype=torch.int64)
        self.req_pool.req_to_token[rows, kv_lens] = self.kv_pool.alloc(len(reqs)).to(torch.int32)
        return [ExtendItem(req, req.kv_len, req.kv_len + 1) for req in reqs]

    def _continue_chunk(self, budget: int) -> ExtendItem | None:
        req = self.chunked
        fill_len = len(req.prompt_ids) + len(req.output_ids)
        take = min(fill_len - req.kv_len, budget)
        self.cache.make_room(take)
        take = min(take, self.kv_pool.available())
        if take <= 0:
            return None  # decode steps will retract someone to make room
        self._alloc(req, req.kv_len, take)
        if req.kv_len + take == fill_len:
            self.chunked = None
            self._start_running(req)
        return ExtendItem(req, req.kv_len, req.kv_len + take)

    def _admit(self, items: list[ExtendItem], budget: int) -> list[Req]:
        admitted: list[Req] = []
        reserved = self._reserved()
        batch_fills = [item.req.fill_ids for item in items]
        for req in self.policy.order(self.waiting, self.cache.match):
            if budget <= 0 or self.req_pool.available() == 0:
                break
            match = self.cache.match(req)  # fresh: earlier matches may have split or evicted nodes
            fill = req.fill_ids
            extend = len(fill) - match.length
            if self.policy.defers_in_batch_sharing() and any(
                common_prefix_len(fill, other) - match.length >= IN_BATCH_SHARE_MIN for other in batch_fills
            ):
                continue  # next step it hits what the other request is computing now
            take = extend
            if take > budget:
                if self.chunked_prefill and self.chunked is None:
                    take = budget
                elif items:
                    break
            alone = not items and not self.running and self.chunked is None
            req.row = self.req_pool.alloc()
            self.cache.lock(req, match)
            future = extend - take + self._estimate(req)
            headroom = self.cache.headroom()
            if headroom < take or (not alone and headroom - reserved < take + future):
                self.cache.unlock(req)
                req.kv_len = 0
                self._free_row(req)
                break
            self.cache.make_room(take)
            self._alloc(req, match.length, take)
            if not req.admissions:  # what the caller sees: prompt tokens cached when it started
                req.cached_tokens = match.length
                req.queue_time = self.clock() - req.queued_at
            req.admissions += 1
            self.stats.cached_prefill_tokens += match.length
            req.status = ReqStatus.RUNNING
            if take < extend:
                self.chunked = req
            else:
                self._start_running(req)
            items.append(ExtendItem(req, match.length, match.length + take))
            batch_fills.append(fill)
            admitted.append(req)
            reserved += future
            budget -= take
        return admitted

    def _start_running(self, req: Req) -> None:
        self.running.append(req)
        self._decode_groups = None

    def _stop_running(self, req: Req) -> None:
        self.running.remove(req)
        self._decode_groups = None

    def _alloc(self, req: Req, start: int, n: int) -> None:
        slots = self.kv_pool.alloc(n)
        self.req_pool.req_to_token[req.row, start : start + n] = slots.to(torch.int32)

    def _schedule_decode(self) -> ScheduledBatch | None:
        if not self.cache.make_room(len(self.running)):
            self._retract_until_room()
        reqs = self.running
        if not reqs:
            return None
        rows = torch.tensor([r.row for r in reqs], dtype=torch.int64)
        kv_lens = torch.tensor([r.kv_len for r in reqs], dtype=torch.int64)
        slots = self.kv_pool.alloc(len(reqs))
        self.req_pool.req_to_token[rows, kv_lens] = slots.to(torch.int32)
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
        if self.drafter is not None:
            verify = self._schedule_verify(reqs)
            if verify is not None:
                return verify
        if self._decode_groups is None:  # locked paths only change when the running set does
            self._decode_groups = self.cache.shared_prefix_groups(reqs)
        return build_decode(reqs, rows, kv_lens, slots, self._decode_groups)

    def _schedule_verify(self, reqs: list[Req]) -> ScheduledBatch | None:
        """A verify pass of the drafter's proposals (each request's slot for its last token is already in
        its row). None when nothing was drafted or the pool has no room for the drafts (the caller decodes
        normally then: drafts never cause an eviction of running work)."""
        drafts = self.drafter.propose(reqs)
        extra = sum(len(d) for d in drafts)
        if not extra or not self.cache.make_room(extra):
            return None
        draft_slots = self.kv_pool.alloc(extra).to(torch.int32)
        kv_lens = [r.kv_len for r in reqs]
        offset = 0
        for req, draft, kv_len in zip(reqs, drafts, kv_lens):
            n = len(draft)
            if n:
                self.req_pool.req_to_token[req.row, kv_len + 1 : kv_len + 1 + n] = draft_slots[offset : offset + n]
                offset += n
        return build_verify(reqs, drafts, kv_lens, self.req_pool.req_to_token)

    # ---- memory pressure ---------------------------------------------------------------------
    def _retract_until_room(self) -> None:
        """Retract holders, lowest priority then least progress first, until every remaining running
        request gets a slot."""
        while not self.cache.make_room(len(self.running)):
            candidates = self.holders()
            if len(candidates) <= 1:
                return  # one request always fits a pool that passed admission's size check
            victim = min(candidates, key=lambda r: (r.priority, len(r.output_ids), -len(r.prompt_ids), -r.arrival))
            self.retract(victim)

    def retract(self, req: Req) -> None:
        """Send a holder back to the queue; its computed tokens stay in the tree for the recompute."""
        self._back_to_queue(req)
        if self.drafter is not None:
            self.drafter.forget(req)
        req.retractions += 1
        self.stats.retracted_requests += 1
        self.new_token_ratio = min(1.0, self.new_token_ratio + RETRACT_RATIO_STEP)

    def requeue(self, req: Req) -> None:
        """A running request whose fill grew by more than one token (jump-forward): back to the queue,
        where admission matches its computed tokens in the tree and extends only the new ones. It keeps
        its arrival, so fcfs and lpm take it first."""
        self._back_to_queue(req)

    def _back_to_queue(self, req: Req) -> None:
        if req is self.chunked:
            self.chunked = None
        else:
            self._stop_running(req)
        self.cache.release(req, keep=True)
        self._free_row(req)
        req.status = ReqStatus.WAITING
        self.waiting.append(req)

    # ---- after a forward -------------------------------------------------------------------------
    def after_forward(self, batch: ScheduledBatch, succeeded: bool = True) -> None:
        """The batch's new tokens now have K/V in the pool. Also called after a failed forward
        (`succeeded=False`): the slots are the requests' either way, and aborting them frees the slots.
        After a successful extend its requests' computed tokens become hits for later requests."""
        if batch.is_verify:
            # The last token's K/V is in; each accepted draft's is counted as the output processor takes
            # it, and the rest are freed there (`settle_drafts`). A failed pass frees all drafts now.
            for req in batch.reqs:
                req.kv_len += 1
            if not succeeded:
                self.abandon_drafts(batch)
            return
        for req, n in zip(batch.reqs, batch.extend_lens.tolist()):
            req.kv_len += n
        if succeeded and batch.mode == ForwardMode.EXTEND:
            for req in batch.reqs[: len(batch.reqs) - batch.mixed_decodes]:  # the decodes add no prefix
                if req.status == ReqStatus.RUNNING:
                    self.cache.cache_unfinished(req)

    def settle_drafts(self, batch: ScheduledBatch, i: int, kept: int) -> None:
        """Verify pass, request i (settled in order): free its draft slots past the first `kept`, whose
        K/V the request took."""
        assert i == batch.settled_drafts, "drafts are settled once each, in batch order"
        self.kv_pool.free(batch.draft_slots(i)[kept:])
        batch.settled_drafts = i + 1

    def abandon_drafts(self, batch: ScheduledBatch) -> None:
        """A verify pass that failed (forward, sampling or output): free the drafts not settled yet."""
        for i in range(batch.settled_drafts, len(batch.reqs)):
            self.settle_drafts(batch, i, kept=0)

    # ---- finishing ---------------------------------------------------------------------------
    def finish(self, req: Req, reason: FinishReason) -> None:
        """Release everything the request holds; safe in every state. Only requests that end normally
        leave their tokens in the cache (an abort may come from a failed step with garbage K/V)."""
        req.finish_reason = reason
        if self.drafter is not None:
            self.drafter.forget(req)
        if req.status == ReqStatus.WAITING:
            self.waiting.remove(req)
        elif req.status == ReqStatus.RUNNING:
            if req is self.chunked:
                self.chunked = None
            else:
                self._stop_running(req)
            self.cache.release(req, keep=reason.type != "abort")
            self._free_row(req)
        req.status = ReqStatus.FINISHED

    def _free_row(self, req: Req) -> None:
        if req.row >= 0:
            row, req.row = req.row, -1
            self.req_pool.free(row)
            self._released_rows.append(row)

    def find(self, rid: str) -> Req | None:
        for req in self.waiting + self.holders():
            if req.rid == rid:
                return req
        return None

    def flush_cache(self) -> bool:
        """Drop every cached prefix; only when idle (a running request holds tree nodes)."""
        if self.has_work():
            return False
        self.cache.flush()
        return True

    def memory_snapshot(self) -> dict[str, int]:
        tree = self.cache.tree
        return {
            "kv_pool_size": self.kv_pool.num_slots,
            "kv_pool_used": self.kv_pool.used(),
            "cache_size": tree.total_size() if tree is not None else 0,
            "cache_evictable": tree.evictable_size() if tree is not None else 0,
            "cache_protected": tree.protected_size() if tree is not None else 0,
            "evicted_tokens": tree.evicted_tokens if tree is not None else 0,
            "waiting_requests": len(self.waiting),
            "running_requests": len(self.holders()),
        }

    def check_integrity(self) -> None:
        holders = self.holders()
        self.req_pool.check_integrity()
        self.cache.check_integrity(holders)
        rows = [r.row for r in holders]
        if len(set(rows)) != len(rows) or min(rows, default=0) < 0:
            raise AssertionError(f"holder rows are not distinct and valid: {rows}")
        if self.req_pool.available() != self.req_pool.max_requests - len(holders):
            raise AssertionError("request rows in use disagree with the running requests")
        if any(r.row >= 0 or r.kv_len for r in self.waiting):
            raise AssertionError("a waiting request still holds a row or KV")
