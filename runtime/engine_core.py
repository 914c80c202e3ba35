"""EngineCore: the scheduler loop (one background thread) and the processing of each step's results.

    batch = scheduler.schedule() -> logits = model_runner.forward(batch)
    -> tokens = sampler.sample(logits) -> process_results(batch, logits, tokens)

Other threads talk to the loop only through `submit`, `abort` and `call` (a thread-safe inbox), so all
request and memory state is touched by the loop thread alone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import traceback
from typing import Any, Callable

import torch

from loomlm.runtime.batch import ScheduledBatch
from loomlm.runtime.config import EngineConfig
from loomlm.runtime.constrained import ConstraintMasks
from loomlm.runtime.forward_context import ForwardMode
from loomlm.runtime.model_runner import ModelRunner
from loomlm.runtime.request import FinishReason, Req, ReqOutput, ReqStatus
from loomlm.runtime.sampler import Sampler, compute_logprobs
from loomlm.runtime.scheduler import Scheduler
from loomlm.runtime.stats import EngineStats

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, runner: ModelRunner, tokenizer: Any, config: EngineConfig):
        self.runner = runner
        self.tokenizer = tokenizer
        self.sampler = Sampler(runner.vocab_size, runner.req_pool.max_requests, runner.device)
        self.stats = EngineStats()
        self.constraints = ConstraintMasks(runner.vocab_size, runner.req_pool.max_requests, runner.device)
        # A jump sends the request back through an extend step that reuses its cached prefix; without
        # the radix cache that would recompute the whole sequence, so jump-forward needs the cache.
        self.jump_forward = not config.disable_jump_forward and not config.disable_radix_cache
        self.scheduler = Scheduler(
            runner.kv_pool, runner.req_pool, prefill_budget=config.prefill_token_budget(),
            chunked_prefill=config.chunked_prefill_size != -1, policy=config.schedule_policy,
            enable_cache=not config.disable_radix_cache, stats=self.stats,
            on_row_released=self._release_sampler_row)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loomlm-scheduler", daemon=True)
        self._thread.start()

    # ---- thread-safe entry points ------------------------------------------------------------
    def submit(self, *reqs: Req) -> None:
        """Queue requests; those of one call are all queued before the next step is scheduled, so they
        can share its batch (a select's choices are scored in one extend)."""
        self._inbox.put(("add", *reqs))

    def abort(self, rid: str) -> None:
        self._inbox.put(("abort", rid))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the loop thread between steps and return its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put(("call", fn, fut))
        return fut.result()

    def shutdown(self) -> None:
        if not self._stopped.is_set():
            self._inbox.put(("stop",))
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            idle = True
            while not self._stopped.is_set():
                self._drain_inbox(block=idle)
                idle = not self.scheduler.has_work()
                if not idle and not self._stopped.is_set():
                    # Work that cannot be scheduled (never expected) waits for the inbox instead of spinning.
                    idle = not self.step()
        finally:
            self._stopped.set()
            for req in self.scheduler.waiting + self.scheduler.holders():
                self._finish(req, FinishReason("abort", message="engine shut down"))

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "add":
            for req in item[1:]:
                self._init_input_logprobs(req)
                self.stats.requests_received += 1
                if self._prefix_jump(req):
                    self.scheduler.add(req)
        elif kind == "abort":
            req = self.scheduler.find(item[1])
            if req is not None:
                self._finish(req, FinishReason("abort", message="aborted by the caller"))
        elif kind == "call":
            fn, fut = item[1], item[2]
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the calling thread
                fut.set_exception(exc)
        elif kind == "stop":
            self._stopped.set()

    def step(self) -> bool:
        """One schedule -> forward -> sample -> process cycle; False when there was nothing to run."""
        try:
            batch = self.scheduler.schedule()
        except Exception as exc:   # a scheduler bug: fail what is in flight, keep serving
            logger.error("scheduling failed:\n%s", traceback.format_exc())
            for req in self.scheduler.holders():
                self._finish(req, FinishReason("abort", message=f"engine error: {exc!r}"))
            return True
        if batch is None:
            return False
        forwarded = False
        try:
            if batch.mode == ForwardMode.EXTEND:
                for req in batch.reqs:
                    if not self.sampler.in_use(req.row):   # first chunk, or resumed after a retraction
                        self.sampler.begin_request(req.row, req.params, req.prompt_ids, req.seed,
                                                   req.stop_token_ids, req.output_ids)
                        if req.grammar is not None:
                            self.constraints.begin(req.row, req.grammar)
            logits = self.runner.forward(batch)
            self.scheduler.after_forward(batch)
            forwarded = True
            if batch.mode == ForwardMode.EXTEND:
                self.scheduler.cache_prefill(batch)
            sampling = batch.sampling_reqs
            sample_logits = logits[batch.sample_rows]
            rows = batch.req_rows[batch.sample_index]
            num_generated = torch.tensor([len(r.output_ids) for r in sampling], dtype=torch.int64)
            if self.constraints.active:
                sample_logits = self.constraints.apply(sample_logits, rows)
            tokens = self.sampler.sample(sample_logits, rows, num_generated)
            self.sampler.record(rows, tokens)
            self.stats.record_step(batch)
            self._process_results(batch, sampling, logits, sample_logits, tokens)
        except Exception as exc:  # a failed step must not hang callers or leak slots
            logger.error("step failed:\n%s", traceback.format_exc())
            if not forwarded:
                self.scheduler.after_forward(batch)   # the batch's slots are owned by its requests
            for req in batch.reqs:
                self._finish(req, FinishReason("abort", message=f"engine error: {exc!r}"))
        return True

    def _release_sampler_row(self, row: int) -> None:
        if self.sampler.in_use(row):
            self.sampler.end_request(row)
        self.constraints.end(row)

    # ---- results -----------------------------------------------------------------------------
    def _process_results(self, batch: ScheduledBatch, sampling: list[Req], logits: torch.Tensor,
                         sample_logits: torch.Tensor, tokens: torch.Tensor) -> None:
        token_list = tokens.tolist()
        lp_rows = self._output_logprobs(sampling, sample_logits, tokens)
        if batch.mode == ForwardMode.EXTEND:
            self._input_logprobs(batch, logits)
        for i, req in enumerate(sampling):
            if req.status != ReqStatus.RUNNING:
                continue
            if len(req.output_ids) >= req.max_new_tokens:   # max_new_tokens == 0: prompt only
                self._finish(req, FinishReason("length", matched=None))
                continue
            token = token_list[i]
            req.output_ids.append(token)
            if lp_rows is not None and req.logprobs.return_logprob:
                lp, top_vals, top_ids = lp_rows
                req.output_token_logprobs.append((lp[i], token, None))
                k = req.logprobs.top_logprobs_num
                if k:
                    req.output_top_logprobs.append(list(zip(top_vals[i][:k], top_ids[i][:k], [None] * k)))
            self._advance(req, token)

    def _output_logprobs(self, sampling: list[Req], sample_logits: torch.Tensor, tokens: torch.Tensor):
        wanted = [r.logprobs.top_logprobs_num for r in sampling if r.logprobs.return_logprob]
        if not wanted:
            return None
        lp, top_vals, top_ids = compute_logprobs(sample_logits, tokens, max(wanted))
        return lp.tolist(), top_vals.tolist(), top_ids.tolist()

    @staticmethod
    def _init_input_logprobs(req: Req) -> None:
        """Decide which prompt positions owe a logprob (row p of the logits scores token p + 1)."""
        opts = req.logprobs
        if not opts.return_logprob or opts.logprob_start_len < 0:
            req.scored_upto = len(req.prompt_ids)
            return
        req.scored_upto = max(opts.logprob_start_len, 1)
        if opts.logprob_start_len == 0:   # the first token has no logprob; SGLang reports None
            req.input_token_logprobs.append((None, req.prompt_ids[0], None))
            if opts.top_logprobs_num:
                req.input_top_logprobs.append([])

    def _input_logprobs(self, batch: ScheduledBatch, logits: torch.Tensor) -> None:
        for req, span in zip(batch.reqs, batch.logprob_spans):
            if not span.count:
                continue
            end = span.first_target + span.count
            targets = req.prompt_ids[span.first_target:end]
            k = req.logprobs.top_logprobs_num
            lp, tv, ti = compute_logprobs(logits[span.first_row:span.first_row + span.count],
                                          torch.tensor(targets, dtype=torch.int64, device=logits.device), k)
            req.input_token_logprobs += [(v, t, None) for v, t in zip(lp.tolist(), targets)]
            if k:
                req.input_top_logprobs += [list(zip(vals, ids, [None] * k))
                                           for vals, ids in zip(tv.tolist(), ti.tolist())]
            req.scored_upto = end

    def _advance(self, req: Req, token: int) -> None:
        """Advance the guide, detokenize the new token (or jump forward), check every stop condition,
        send the increment."""
        reason: FinishReason | None = None
        delta = ""
        new_ids = [token]
        gs = req.grammar
        jump = None
        if gs is not None and token not in req.stop_token_ids:
            gs.advance(token)
            if gs.rejected:   # only if nothing but a blocked EOS was allowed (min_new_tokens)
                self._finish(req, FinishReason("abort", message=f"token {token} is outside the constraint "
                                               f"({gs.guide.description})"))
                return
            if self.jump_forward and not req.logprobs.return_logprob:
                room = min(req.max_new_tokens - len(req.output_ids),
                           self.runner.context_length - req.seq_len) + 1   # +1: the last token is replaced
                jump = gs.plan_jump(token, self._encode, room)
        if token in req.stop_token_ids:
            reason = FinishReason("stop", matched=token)
        else:
            if jump is not None:
                del req.output_ids[len(req.output_ids) - jump.num_replaced:]
                req.output_ids.extend(jump.tokens)
                gs.apply_jump(jump)
                # The sampled token was not detokenized yet: feed what replaces it (or follows it).
                new_ids = list(jump.tokens) if jump.num_replaced else [token, *jump.tokens]
                self.stats.jump_forward_tokens += len(jump.tokens) - jump.num_replaced
                self.stats.jump_forward_jumps += 1
                delta = req.detokenizer.add(new_ids)
            else:
                delta = req.detokenizer.add(token)
            if req.stop_matcher is not None:
                delta, matched = req.stop_matcher.feed(delta)
                if matched is not None:
                    reason = FinishReason("stop", matched=matched)
        if reason is None and gs is not None and gs.finished:   # the guide can only end here
            reason = FinishReason("stop", matched=None)
        if reason is None and (len(req.output_ids) >= req.max_new_tokens
                               or req.seq_len >= self.runner.context_length):
            reason = FinishReason("length", matched=None)
        if reason is not None and not isinstance(reason.matched, str):
            tail, matched = self._flush_text(req)   # text held back for a possible stop string is final now
            delta += tail
            if matched is not None:
                reason = FinishReason("stop", matched=matched)
        if reason is not None:
            self._finish(req, reason, delta, new_ids)
            return
        self._send(req, ReqOutput(req.rid, delta, new_ids, False, self._meta_info(req, final=False)))
        if req.status != ReqStatus.RUNNING:
            return
        if jump is not None:
            self.scheduler.requeue(req)   # an extend step computes the jumped tokens after the cached prefix
        elif gs is not None:
            self.constraints.update(req.row)

    def _prefix_jump(self, req: Req) -> bool:
        """Jump-forward before the prefill: an output that must start with forced text (`{"` of a
        JSON object) gets those tokens now and its prefill computes them with the prompt. Returns
        False when that already finished the request."""
        gs = req.grammar
        if (gs is None or not self.jump_forward or req.logprobs.return_logprob or req.output_ids
                or req.stop_matcher is not None):   # stop strings are matched on sampled steps only
            return True
        plan = gs.plan_prefix_jump(self._encode, req.max_new_tokens)
        if plan is None:
            return True
        gs.apply_jump(plan)
        req.output_ids.extend(plan.tokens)
        self.stats.jump_forward_tokens += len(plan.tokens)
        self.stats.jump_forward_jumps += 1
        delta = req.detokenizer.add(list(plan.tokens))
        if gs.finished or len(req.output_ids) >= req.max_new_tokens:
            self.scheduler.add(req)   # finish() expects a queued request
            tail, _ = self._flush_text(req)
            reason = FinishReason("stop" if gs.finished else "length", matched=None)
            self._finish(req, reason, delta + tail, list(plan.tokens))
            return False
        self._send(req, ReqOutput(req.rid, delta, list(plan.tokens), False, self._meta_info(req, final=False)))
        return True

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    @staticmethod
    def _flush_text(req: Req) -> tuple[str, str | None]:
        """(remaining text, stop string found in it or None) at the end of a request."""
        tail = req.detokenizer.flush()
        if req.stop_matcher is None:
            return tail, None
        tail, matched = req.stop_matcher.feed(tail)
        if matched is None:
            tail += req.stop_matcher.flush()
            matched = req.stop_matcher.matched
        return tail, matched

    def _finish(self, req: Req, reason: FinishReason, delta: str = "", new_ids: list[int] | None = None) -> None:
        if req.status == ReqStatus.FINISHED:
            return
        self.scheduler.finish(req, reason)   # releases the sampler row through _release_sampler_row
        self.stats.requests_finished += 1
        if new_ids is None:
            new_ids = req.output_ids[-1:] if req.output_ids and reason.type != "abort" else []
        self._send(req, ReqOutput(req.rid, delta, new_ids, True, self._meta_info(req, final=True)))

    def _send(self, req: Req, out: ReqOutput) -> None:
        """Hand an increment to the caller; a caller that is gone (closed event loop) loses its request."""
        try:
            req.sink(out)
        except Exception:
            logger.warning("could not deliver output of request %s; aborting it", req.rid, exc_info=True)
            if not out.finished:
                self._finish(req, FinishReason("abort", message="the caller stopped listening"))

    @staticmethod
    def _meta_info(req: Req, final: bool) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": req.rid,
            "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": len(req.output_ids),
            "cached_tokens": req.cached_tokens,
            "finish_reason": req.finish_reason.to_dict() if final and req.finish_reason else None,
        }
        if req.logprobs.return_logprob:
            meta["output_token_logprobs"] = list(req.output_token_logprobs)
            meta["input_token_logprobs"] = list(req.input_token_logprobs)
            if req.logprobs.top_logprobs_num:
                meta["output_top_logprobs"] = list(req.output_top_logprobs)
                meta["input_top_logprobs"] = list(req.input_top_logprobs)
        return meta

    def check_integrity(self) -> None:
        """Every slot and row is accounted for (run on the loop thread)."""
        self.call(self.scheduler.check_integrity)
