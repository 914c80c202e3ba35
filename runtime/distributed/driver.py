"""TensorParallelDriver: rank 0's side of a tensor-parallel engine.

It starts ranks 1..N-1 as processes (`python -m loomlm.runtime.distributed.follower`: fresh
interpreters, so no inherited threads or CUDA state, and no re-import of the user's main module as
multiprocessing's spawn would do), makes rank 0's end of the group, and before each forward sends the
step (`batch_wire.py`); the ranks then run the same forward in lockstep, meeting in its all-reduces.
Only rank 0 schedules, samples and answers.

When a rank fails it writes why into the group's store (kept by rank 0's process) and exits; its closed
sockets make rank 0's next collective raise, and the driver turns that into one error naming the rank
and its reason. The group is then down: every later forward fails at once with the same error (the
engine fails those steps' requests; nothing waits forever), and `close` reaps the processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time
from typing import Any

import torch

from loomlm.runtime.distributed.batch_wire import STOP, encode_forward
from loomlm.runtime.distributed.group import TensorParallelGroup
from loomlm.runtime.memory_pool import ReqToTokenPool

logger = logging.getLogger(__name__)

_REPORT_WAIT_S = 10.0  # how long a failed collective waits for the failed rank's own report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorParallelError(RuntimeError):
    """A rank of the tensor-parallel group failed; the group is down."""


class TensorParallelDriver:
    def __init__(self, config: Any, device: torch.device):
        size = config.tp_size
        port = _free_port()
        settings = json.dumps(dataclasses.asdict(config))
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "loomlm.runtime.distributed.follower", str(rank), str(port), settings]
            )
            for rank in range(1, size)
        ]
        self.failure: str | None = None
        self.group: TensorParallelGroup | None = None
        try:
            alive = lambda: all(p.poll() is None for p in self.processes)
            self.group = TensorParallelGroup(0, size, port, device, config.tp_timeout_s, alive)
        except Exception as exc:
            reason = self._reason(exc)
            self.close()
            raise TensorParallelError(reason) from None
        logger.info("tensor parallel: %d ranks (pids %s)", size, [p.pid for p in self.processes])

    def _reason(self, exc: BaseException) -> str:
        """Why the group failed: a rank's own report when one comes, else which ranks are gone."""
        deadline = time.monotonic() + _REPORT_WAIT_S
        while True:
            for rank in range(1, len(self.processes) + 1):
                report = self._report(rank)
                if report is not None:
                    return f"tensor-parallel rank {rank} failed: {report}"
            if time.monotonic() > deadline or all(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.05)
        dead = [f"rank {i + 1} (exit code {p.poll()})" for i, p in enumerate(self.processes) if p.poll() is not None]
        return f"tensor-parallel group failed ({', '.join(dead) or 'no rank reported'}): {exc}"

    def _report(self, rank: int) -> str | None:
        store = None if self.group is None else self.group.store
        key = f"error/{rank}"
        if store is None or not store.check([key]):
            return None
        return store.get(key).decode()

    def guarded(self, work: Any) -> Any:
        """Run `work()` (which uses the group); a failure there downs the group with the rank's reason."""
        if self.failure is not None:
            raise TensorParallelError(self.failure)
        try:
            return work()
        except RuntimeError as exc:
            self.failure = self._reason(exc)
            logger.error("%s", self.failure)
            raise TensorParallelError(self.failure) from None

    def send_forward(self, batch: Any, req_pool: ReqToTokenPool) -> None:
        message = encode_forward(batch, req_pool)
        self.guarded(lambda: self.group.broadcast_ints(message))

    def close(self) -> None:
        """Stop the other ranks (a stop message while the group is up, else a kill) and reap them."""
        if self.group is not None and self.failure is None:
            try:
                self.group.broadcast_ints(STOP)
            except RuntimeError:
                self.failure = "closed"
        for process in self.processes:
            if self.group is None or self.failure is not None:
                process.kill()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.group is not None:
            self.group.close()
