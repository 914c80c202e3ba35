"""Everything after sampling: one step's tokens become output, and requests finish or go on.

For each request that sampled, `OutputProcessor.process` appends the token and its logprobs, advances the
request's guide (and plans a jump-forward over text the grammar forces), detokenizes, matches stop strings,
checks every finish condition and delivers a `ReqOutput` increment to the request's sink; a request that
jumped goes back to the scheduler's queue so that an extend step computes the jumped tokens. Prompt
logprobs of an extend step are recorded here too.

`admit` is the same work for a request that has not run yet: its prompt-logprob bookkeeping, and a
jump-forward over text its output must start with (`{"` of a JSON object). `finish` and `abort` end
requests from anywhere on the loop thread; the scheduler frees their memory.

Runs on the loop thread only. Guide masks are not touched here: the sampler points each constrained row at
its guide's state when the row is next prepared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from loomlm.runtime.batch import ScheduledBatch
from loomlm.runtime.forward_context import ForwardMode
from loomlm.runtime.logprobs import OutputLogprobs, init_input_logprobs, record_input_logprobs
from loomlm.runtime.request import FinishReason, Req, ReqOutput, ReqStatus
from loomlm.runtime.sampler import SampledTokens
from loomlm.runtime.scheduler import Scheduler
from loomlm.runtime.stats import EngineStats

logger = logging.getLogger(__name__)


class OutputProcessor:
    def __init__(
        self, scheduler: Scheduler, stats: EngineStats, tokenizer: Any, context_length: int, jump_forward: bool
    ):
        self.scheduler = scheduler
        self.stats = stats
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.jump_forward = jump_forward

    # ---- requests before their first step ---------------------------------------------------------
    def admit(self, req: Req) -> None:
        """A request arrives: prepare its logprob bookkeeping and queue it (unless a jump-forward over
        its forced output prefix already finished it)."""
        init_input_logprobs(req)
        self.stats.requests_received += 1
        if self._prefix_jump(req):
            self.scheduler.add(req)

    def _prefix_jump(self, req: Req) -> bool:
        """Jump-forward before the prefill: an output that must start with forced text (`{"` of a
        JSON object) gets those tokens now and its prefill computes them with the prompt. Returns
        False when that already finished the request."""
        gs = req.grammar
        if (
            gs is None
            or not self.jump_forward
            or req.logprobs.return_logprob
            or req.output_ids
            or req.stop_matcher is not None
        ):  # stop strings are matched on sampled steps only
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
            self.scheduler.add(req)  # finish() expects a queued request
            tail, _ = self._flush_text(req)
            reason = FinishReason("stop" if gs.finished else "length", matched=None)
            self.finish(req, reason, delta + tail, list(plan.tokens))
            return False
        self._send(req, ReqOutput(req.rid, delta, list(plan.tokens), False, self._meta_info(req, final=False)))
        return True

    # ---- one step's results ---------------------------------------------------------------------
    def process(self, batch: ScheduledBatch, logits: torch.Tensor, sampled: SampledTokens) -> None:
        """logits [N, V]: the batch's logits rows (prompt logprobs); `sampled`: its sampling."""
        self.stats.record_step(batch)
        if batch.is_verify:
            self._process_verify(batch, sampled)
            return
        token_list = sampled.tokens.tolist()
        logprobs = OutputLogprobs(sampled.reqs, sampled.logits, sampled.tokens)
        if batch.mode == ForwardMode.EXTEND:
            record_input_logprobs(batch, logits)
        for i, req in enumerate(sampled.reqs):
            if req.status != ReqStatus.RUNNING:
                continue
            if len(req.output_ids) >= req.max_new_tokens:  # max_new_tokens == 0: prompt only
                self.finish(req, FinishReason("length", matched=None))
                continue
            token = token_list[i]
            req.output_ids.append(token)
            logprobs.record(req, i, token)
            self._advance(req, token)

    def _process_verify(self, batch: ScheduledBatch, sampled: SampledTokens) -> None:
        """A speculative verify pass: each request takes its accepted drafts and the token sampled after
        them, one by one as if decoded (a stop, a finish or a jump-forward ends the run early); the K/V
        slots of drafts it did not take are freed."""
        token_list = sampled.tokens.tolist()
        counts = batch.extend_lens.tolist()
        row_reqs = [req for req, n in zip(batch.reqs, counts) for _ in range(n)]
        logprobs = OutputLogprobs(row_reqs, sampled.logits, sampled.tokens)
        drafter = self.scheduler.drafter
        for i, (req, first) in enumerate(zip(batch.reqs, batch.sample_rows.tolist())):
            accepted = sampled.accepted[i]
            kept = 0
            try:
                for j in range(accepted + 1):
                    if req.status != ReqStatus.RUNNING:
                        break
                    if len(req.output_ids) >= req.max_new_tokens:
                        self.finish(req, FinishReason("length", matched=None))
                        break
                    if j:  # the previous token was draft j: its K/V, computed in this pass, is the request's
                        req.kv_len += 1
                        kept += 1
                    token = token_list[first + j]
                    req.output_ids.append(token)
                    logprobs.record(req, first + j, token)
                    self._advance(req, token)
            finally:  # also when the step fails here: the drafts the request took are its own
                self.scheduler.settle_drafts(batch, i, kept)
            self.stats.spec_accepted_tokens += kept
            if drafter is not None:
                drafter.observe(req, len(batch.drafts[i]), accepted)

    def _advance(self, req: Req, token: int) -> None:
        """Advance the guide, detokenize the new token (or jump forward), check every stop condition,
        send the increment."""
        reason: FinishReason | None = None
        delta = ""
        new_ids = [token]
        gs = req.grammar
        jump = None
        if gs is not None and token not in req.stop_token_ids:
            if gs.error is None:
                gs.advance(token)
            if gs.rejected:  # a grammar limit, or nothing but a blocked EOS was allowed (min_new_tokens)
                message = gs.error or f"token {token} is outside the constraint ({gs.guide.description})"
                self.finish(req, FinishReason("abort", message=message))
                return
            if self.jump_forward and not req.logprobs.return_logprob:
                room = (
                    min(req.max_new_tokens - len(req.output_ids), self.context_length - req.seq_len) + 1
                )  # +1: the last token is replaced
                jump = gs.plan_jump(token, self._encode, room)
        if token in req.stop_token_ids:
            reason = FinishReason("stop", matched=token)
        else:
            if jump is not None:
                del req.output_ids[len(req.output_ids) - jump.num_replaced :]
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
        if reason is None and gs is not None and gs.finished:  # the guide can only end here
            reason = FinishReason("stop", matched=None)
        if reason is None and (len(req.output_ids) >= req.max_new_tokens or req.seq_len >= self.context_length):
            reason = FinishReason("length", matched=None)
        if reason is not None and not isinstance(reason.matched, str):
            tail, matched = self._flush_text(req)  # text held back for a possible stop string is final now
            delta += tail
            if matched is not None:
                reason = FinishReason("stop", matched=matched)
        if reason is not None:
            self.finish(req, reason, delta, new_ids)
            return
        self._send(req, ReqOutput(req.rid, delta, new_ids, False, self._meta_info(req, final=False)))
        if jump is not None and req.status == ReqStatus.RUNNING:
            self.scheduler.requeue(req)  # an extend step computes the jumped tokens after the cached prefix

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

    # ---- finishing ------------------------------------------------------------------------------
    def finish(self, req: Req, reason: FinishReason, delta: str = "", new_ids: list[int] | None = None) -> None:
        """End a request in any state (a no-op when it already finished) and send its last increment."""
        if req.status == ReqStatus.FINISHED:
            return
        self.scheduler.finish(req, reason)  # its row goes to the sampler with the next batch
        self.stats.requests_finished += 1
        if new_ids is None:
            new_ids = req.output_ids[-1:] if req.output_ids and reason.type != "abort" else []
        self._send(req, ReqOutput(req.rid, delta, new_ids, True, self._meta_info(req, final=True)))

    def abort(self, reqs: Iterable[Req], message: str) -> None:
        for req in list(reqs):
            self.finish(req, FinishReason("abort", message=message))

    def _send(self, req: Req, out: ReqOutput) -> None:
        """Hand an increment to the caller; a caller that is gone (closed event loop) loses its request."""
        try:
            req.sink(out)
        except Exception:
            logger.warning("could not deliver output of request %s; aborting it", req.rid, exc_info=True)
            if not out.finished:
                self.finish(req, FinishReason("abort", message="the caller stopped listening"))

    @staticmethod
    def _meta_info(req: Req, final: bool) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": req.rid,
            "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": len(req.output_ids),
            "cached_tokens": req.cached_tokens,
            "finish_reason": req.finish_reason.to_dict() if final and req.finish_reason else None,
        }
        if final:
            meta["queue_time"] = req.queue_time
        if req.draft_state is not None:
            meta["spec_verify_ct"] = req.draft_state.verify_passes
        if req.logprobs.return_logprob:
            meta["output_token_logprobs"] = list(req.output_token_logprobs)
            meta["input_token_logprobs"] = list(req.input_token_logprobs)
            if req.logprobs.top_logprobs_num:
                meta["output_top_logprobs"] = list(req.output_top_logprobs)
                meta["input_top_logprobs"] = list(req.input_top_logprobs)
        return meta
