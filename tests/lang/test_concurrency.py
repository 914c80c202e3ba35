"""Execution model: `run` returns before its gens finish (reads wait), and fork branches run at the same
time. A gate in front of the real in-process backend holds gens until the test lets them go."""

from __future__ import annotations

import threading

import loomlm as sgl
from loomlm.lang.backends.local import LocalBackend


class GatedBackend(LocalBackend):
    """The real engine behind a gate: each gen waits at a barrier of `parties` callers first."""

    def __init__(self, engine, parties: int):
        super().__init__(engine)
        self.barrier = threading.Barrier(parties, timeout=30)
        self.entered = threading.Semaphore(0)

    def generate(self, prompt, sampling, logprobs):
        self.entered.release()
        self.barrier.wait()  # BrokenBarrierError after 30 s if the others never arrive
        return super().generate(prompt, sampling, logprobs)


def test_run_returns_before_the_gen_finishes(engine):
    backend = GatedBackend(engine, parties=2)  # the gen and this test

    @sgl.function
    def prog(s):
        s += "Hello"
        s += sgl.gen("x", max_tokens=2)

    state = prog.run(backend=backend, temperature=0)
    assert backend.entered.acquire(timeout=30)  # the gen started on the program's own thread...
    assert "x" in state and state.stream_executor.variables.get("x") is None  # ...and has not finished
    backend.barrier.wait()  # let it go
    assert isinstance(state["x"], str)


def test_fork_branches_run_concurrently(engine):
    backend = GatedBackend(engine, parties=3)  # three branches must all be inside generate at once

    @sgl.function
    def prog(s):
        s += "Count:"
        forks = s.fork(3)
        forks += sgl.gen("n", max_tokens=2)
        forks.join()

    state = prog.run(backend=backend, temperature=0)
    assert len(state["n"]) == 3  # a sequential executor would break the barrier instead
