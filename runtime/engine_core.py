"""EngineCore: the engine loop (one background thread) and its step.

    batch = scheduler.schedule()                 # what runs now; rows freed since the last batch
    sampler.prepare(batch)                       # claim / release sampler rows, grammar masks
    logits = runner.forward(batch)
    sampled = sampler.sample_batch(batch, logits)
    output.process(batch, logits, sampled)       # tokens -> text, finish, requeue, deliver

Other threads talk to the loop only through `submit`, `abort` and `call` (a thread-safe inbox of
`runtime/inbox.py` messages), so all request and memory state is touched by the loop thread alone: the
process's compute thread (`runtime/compute_thread.py`), which builds every engine's model and gives each
busy engine a `turn` (its inbox, then one step) in rotation. `EngineCore(..., start_loop=False)` makes a
core the compute thread does not step: a test then drives it on its own thread with `drain_inbox()` and
`step()`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loomlm.runtime.compute_thread import ComputeThread
from loomlm.runtime.config import EngineConfig
from loomlm.runtime.inbox import AbortRequest, AddRequests, CallOnLoop, Message, StopLoop
from loomlm.runtime.output_processor import OutputProcessor
from loomlm.runtime.request import Req
from loomlm.runtime.sampler import Sampler
from loomlm.runtime.scheduler import Scheduler
from loomlm.runtime.speculative import Drafter, NgramDrafter
from loomlm.runtime.stats import EngineStats

if TYPE_CHECKING:
    from loomlm.runtime.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def _drafter(config: EngineConfig, runner: Any) -> Drafter | None:
    if config.speculative_algorithm is None:
        return None
    context_length = runner.context_length
    if config.speculative_algorithm == "STANDALONE":
        from loomlm.runtime.draft_model import DraftModelDrafter  # loads a second model

        return DraftModelDrafter(config, runner)
    return NgramDrafter(
        config.speculative_num_draft_tokens,
        config.speculative_ngram_min_match_window_size,
        config.speculative_ngram_max_match_window_size,
        context_length,
    )


class EngineCore:
    def __init__(self, runner: ModelRunner, tokenizer: Any, config: EngineConfig, start_loop: bool = True):
        """`runner` provides forward(batch) -> logits, vocab_size, kv_pool, req_pool, device and
        context_length (a ModelRunner, or a model-free stand-in in tests)."""
        self.runner = runner
        self.tokenizer = tokenizer
        self.stats = EngineStats()
        self.sampler = Sampler(runner.vocab_size, runner.req_pool.max_requests, runner.device)
        self.scheduler = Scheduler(
            runner.kv_pool,
            runner.req_pool,
            prefill_budget=config.prefill_token_budget(),
            chunked_prefill=config.chunked_prefill_size != -1,
            policy=config.schedule_policy,
            enable_cache=not config.disable_radix_cache,
            stats=self.stats,
            mix_decodes=config.enable_mixed_chunk,
            mixed_budget=config.mixed_prefill_tokens,
            drafter=_drafter(config, runner),
        )
        # A jump sends the request back through an extend step that reuses its cached prefix; without
        # the radix cache that would recompute the whole sequence, so jump-forward needs the cache.
        jump_forward = not config.disable_jump_forward and not config.disable_radix_cache
        self.output = OutputProcessor(self.scheduler, self.stats, tokenizer, runner.context_length, jump_forward)
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._stopped = threading.Event()  # no more steps (StopLoop handled, or stopped before starting)
        self._done = threading.Event()  # stopped and everything queued or running ended
        self._unread_lock = threading.Lock()  # a stopped core's inbox may be ended from two threads
        self._compute: ComputeThread | None = None  # set once the compute thread steps this core
        if start_loop:
            compute = ComputeThread.get()
            compute.run(lambda: self._start_on(compute))

    @classmethod
    def launch(cls, build: Callable[[], tuple[Any, Any]], config: EngineConfig) -> EngineCore:
        """Build `(runner, tokenizer)` on the process's compute thread (runtime/compute_thread.py: one
        thread does all parallel torch work) and start stepping the core there; an exception of `build`
        is raised here."""
        compute = ComputeThread.get()

        def build_and_start() -> EngineCore:
            runner, tokenizer = build()
            core = cls(runner, tokenizer, config, start_loop=False)
            core._start_on(compute)
            return core

        return compute.run(build_and_start)

    def _start_on(self, compute: ComputeThread) -> None:
        self._compute = compute
        compute.add(self)

    # ---- thread-safe entry points ------------------------------------------------------------
    def _post(self, msg: Message) -> None:
        self._inbox.put(msg)
        if self._compute is not None:
            self._compute.wake()
        if self._done.is_set():  # stopped: nobody reads the inbox any more, end the message here
            self._end_unread("engine shut down")

    def submit(self, *reqs: Req) -> None:
        """Queue requests; those of one call are all queued before the next step is scheduled, so they
        can share its batch (a select's choices are scored in one extend)."""
        self._post(AddRequests(reqs))

    def abort(self, rid: str) -> None:
        self._post(AbortRequest(rid))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the loop thread between steps and return its result."""
        if self._compute is not None and threading.get_ident() == self._compute.ident:
            return fn()  # already between steps (another engine's call): waiting would deadlock
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._post(CallOnLoop(fn, fut))
        return fut.result()

    def shutdown(self) -> None:
        if self._compute is None:  # never started: end what is queued here
            self._stopped.set()
            self._abort_everything("engine shut down")
            self._done.set()
        elif threading.get_ident() == self._compute.ident:
            self.stop_now("engine shut down")
        elif not self._stopped.is_set():
            self._post(StopLoop())
            self._done.wait()
        else:
            self._done.wait()

    @property
    def alive(self) -> bool:
        return self._compute is not None and not self._stopped.is_set()

    def check_integrity(self) -> None:
        """Every slot and row is accounted for (runs on the loop thread)."""
        self.call(self.check_integrity_on_loop)

    def check_integrity_on_loop(self) -> None:
        """`check_integrity` for the caller that is the loop (a step's caller in tests)."""
        self.scheduler.check_integrity()
        self.sampler.check_rows((r.row for r in self.scheduler.holders()), self.scheduler.pending_released_rows)

    # ---- the loop ----------------------------------------------------------------------------
    def turn(self) -> bool:
        """The compute thread's turn at this core: handle the inbox, then one step if there is work.
        Returns whether anything was done (False: the thread may wait for a wake-up)."""
        handled = self.drain_inbox()
        if self._stopped.is_set():
            self.stop_now("engine shut down")
            return True
        if not self.scheduler.has_work():
            return handled
        # Work that cannot be scheduled (never expected) waits for the inbox instead of spinning.
        return self.step() or handled

    def stop_now(self, message: str) -> None:
        """Stop stepping this core and end every request it holds (on the compute thread)."""
        self._stopped.set()
        if self._compute is not None:
            self._compute.remove(self)
        self._abort_everything(message)
        self._done.set()
        self._end_unread(message)

    def _end_unread(self, message: str) -> None:
        """End the messages of a stopped core's inbox (its callers must not wait forever). Runs after
        `_done` is set, on whichever thread gets a message: no step touches this core any more."""
        with self._unread_lock:
            self._end_messages(message)

    def _end_messages(self, message: str) -> None:
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, AddRequests):
                for req in msg.reqs:
                    self.scheduler.add(req)
                    self.output.abort([req], message)
            elif isinstance(msg, CallOnLoop):
                msg.future.set_exception(RuntimeError("the engine is shut down"))

    def _abort_everything(self, message: str) -> None:
        self.output.abort(self.scheduler.waiting + self.scheduler.holders(), message)

    def drain_inbox(self) -> bool:
        """Handle every queued message; returns whether there was any."""
        handled = False
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return handled
            handled = True
            self._handle(msg)

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, AddRequests):
            for req in msg.reqs:
                self.output.admit(req)
        elif isinstance(msg, AbortRequest):
            req = self.scheduler.find(msg.rid)
            if req is not None:
                self.output.abort([req], "aborted by the caller")
        elif isinstance(msg, CallOnLoop):
            try:
                msg.future.set_result(msg.fn())
            except BaseException as exc:  # handed to the calling thread
                msg.future.set_exception(exc)
        elif isinstance(msg, StopLoop):
            self._stopped.set()

    def step(self) -> bool:
        """One schedule -> forward -> sample -> process cycle; False when there was nothing to run."""
        try:
            batch = self.scheduler.schedule()
        except Exception as exc:  # a scheduler bug: fail what is in flight, keep serving
            logger.error("scheduling failed:\n%s", traceback.format_exc())
            self.output.abort(self.scheduler.holders(), f"engine error: {exc!r}")
            return True
        if batch is None:
            return False
        forwarded = False
        try:
            self.sampler.prepare(batch)
            logits = self.runner.forward(batch)
            forwarded = True
            self.scheduler.after_forward(batch)  # K/V are in: the requests' lengths grow, prefixes cached
            sampled = self.sampler.sample_batch(batch, logits)
            self.output.process(batch, logits, sampled)
        except Exception as exc:  # a failed step must not hang callers or leak slots
            logger.error("step failed:\n%s", traceback.format_exc())
            if not forwarded:  # the batch's slots are owned by its requests: aborting them frees them
                self.scheduler.after_forward(batch, succeeded=False)
            elif batch.is_verify:  # drafts not settled before the failure are no request's yet
                self.scheduler.abandon_drafts(batch)
            self.output.abort(batch.reqs, f"engine error: {exc!r}")
        return True
