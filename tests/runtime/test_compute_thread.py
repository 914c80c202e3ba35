"""The process's one compute thread (runtime/compute_thread.py): engines share it, it stops cleanly when
the interpreter exits with work in flight, and a stopped engine answers instead of hanging."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

import loomlm
from loomlm.runtime.compute_thread import ComputeThread

EXIT_WHILE_DECODING = textwrap.dedent(
    """
    import threading, loomlm
    engine = loomlm.Engine(load_format="dummy", max_total_tokens=4096)
    started = threading.Event()

    def stream():
        for chunk in engine.generate("Hello", {"max_new_tokens": 2000, "ignore_eos": True}, stream=True):
            started.set()

    threading.Thread(target=stream, daemon=True).start()
    started.wait()
    print("exiting mid-decode", flush=True)
    """
)


def test_engines_share_the_compute_thread_and_step_on_it():
    a = loomlm.Engine(load_format="dummy", max_total_tokens=256)
    b = loomlm.Engine(load_format="dummy", max_total_tokens=256)
    try:
        compute = ComputeThread.get()
        assert a.core._compute is b.core._compute is compute
        assert a.core.call(threading.get_ident) == b.core.call(threading.get_ident) == compute.ident
        outs = [e.generate("Hi", {"max_new_tokens": 2, "temperature": 0}) for e in (a, b)]
        assert [o["meta_info"]["completion_tokens"] for o in outs] == [2, 2]
    finally:
        a.shutdown()
        b.shutdown()


def test_a_stopped_engine_answers_instead_of_hanging():
    engine = loomlm.Engine(load_format="dummy", max_total_tokens=256)
    core = engine.core
    engine.shutdown()
    assert not core.alive
    with pytest.raises(RuntimeError, match="shut down"):
        core.call(lambda: None)
    with pytest.raises(RuntimeError, match="shut down"):
        engine.generate("Hi", {"max_new_tokens": 2})


def test_the_interpreter_exits_cleanly_with_a_request_decoding():
    """A daemon thread still stepping while the interpreter finalizes aborts the process (torch frees a
    tensor, releases the GIL, and the thread's forced exit calls std::terminate): it is stopped first."""
    proc = subprocess.run([sys.executable, "-c", EXIT_WHILE_DECODING], capture_output=True, text=True, timeout=300)
    assert "exiting mid-decode" in proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
