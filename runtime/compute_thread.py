"""The one thread per process that builds every engine's model and runs every engine's steps.

Why one thread: with OpenMP (libgomp, which PyTorch's CPU build uses), each thread that runs a parallel
torch op keeps its own pool of worker threads. Once two such pools exist and their threads outnumber
the cores, libgomp stops spinning and wakes its workers with a system call at every parallel region:
on a 2-core machine each region then cost about 45 us more, and batch-1 decode ran at half speed (bf16:
80 tok/s with one engine's thread, 46 tok/s with a second idle engine's thread alive). So engines do not
each own a loop thread: `ComputeThread` builds their runners (loading weights dequantises, packs and
times the linear layers: parallel work too) and takes turns stepping them, one step of each busy engine
at a time. The caller's threads only tokenize, validate and wait.

Ownership is unchanged: each `EngineCore`'s request, memory and sampler state is touched only here.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import queue
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loomlm.runtime.engine_core import EngineCore

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # an idle thread re-checks its engines this often (a submit wakes it at once)
EXIT_JOIN_S = 30.0  # at interpreter exit, how long the step in progress may take to end


class ComputeThread:
    _instance: ComputeThread | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]] = queue.SimpleQueue()
        self._cores: list[EngineCore] = []
        self._wake = threading.Event()
        self._exiting = False
        self._thread = threading.Thread(target=self._run, name="loomlm-engine-loop", daemon=True)
        self._thread.start()
        # A daemon thread still running Python while the interpreter finalizes dies when it frees a
        # tensor (torch releases the GIL there, and the thread's forced exit then aborts the process):
        # stop it first, ending the requests of engines nobody shut down.
        atexit.register(self._stop_at_exit)

    @classmethod
    def get(cls) -> ComputeThread:
        """The process's compute thread (started on first use)."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the compute thread between steps and return its result (or raise its error)."""
        if threading.get_ident() == self._thread.ident:
            return fn()
        if self._exiting:
            raise RuntimeError("the process is exiting: no engine work runs any more")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, future))
        self._wake.set()
        return future.result()

    def add(self, core: EngineCore) -> None:
        """Start stepping `core` (called on the compute thread)."""
        self._cores.append(core)

    def remove(self, core: EngineCore) -> None:
        if core in self._cores:
            self._cores.remove(core)

    def wake(self) -> None:
        """Something was queued for an engine: end an idle wait now."""
        self._wake.set()

    def _stop_at_exit(self) -> None:
        self._exiting = True
        self._wake.set()
        self._thread.join(EXIT_JOIN_S)

    def _run(self) -> None:
        while not self._exiting:
            self._wake.clear()  # before looking: a wake() from here on ends the wait below at once
            busy = self._run_jobs()
            for core in list(self._cores):
                try:
                    busy |= core.turn()
                except BaseException:  # the engine is broken (turn catches step errors): stop it alone
                    logger.error("engine loop failed:\n%s", traceback.format_exc())
                    core.stop_now("engine loop failed")
            if not busy:
                self._wake.wait(IDLE_WAIT_S)
        for core in list(self._cores):
            core.stop_now("the process is exiting")

    def _run_jobs(self) -> bool:
        ran = False
        while True:
            try:
                fn, future = self._jobs.get_nowait()
            except queue.Empty:
                return ran
            ran = True
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread
                future.set_exception(exc)
