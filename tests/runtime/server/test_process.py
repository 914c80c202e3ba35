"""`python -m loomlm.runtime.server` as its own process: it starts on a free port (logged), answers, and
on SIGTERM lets the request in flight finish, refuses new ones with 503, then exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import httpx

_LISTENING = re.compile(r"listening on (http://\S+)")


def test_sigterm_drains_then_the_process_exits_zero():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "loomlm.runtime.server", "--port", "0", "--max-total-tokens", "4000"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        log: list[str] = []
        for line in proc.stderr:  # until the server says where it listens (or the process ends)
            log.append(line)
            if found := _LISTENING.search(line):
                break
        assert found, "".join(log)
        drain = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
        drain.start()  # keep reading the log, so the server never blocks on a full pipe
        with httpx.Client(base_url=found.group(1), timeout=120) as http:
            assert http.get("/health").status_code == 200
            body = {"text": "Count:", "sampling_params": {"max_new_tokens": 40, "ignore_eos": True}, "stream": True}
            with http.stream("POST", "/generate", json=body) as running:
                events = running.iter_lines()
                assert next(events).startswith("data: ")
                proc.send_signal(signal.SIGTERM)
                for _ in range(10_000):  # until the server has seen the signal (a bound, not a timer)
                    if http.get("/health").status_code == 503:
                        break
                refused = http.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2}})
                assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
                rest = [line for line in events if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["meta_info"]["completion_tokens"] == 40
        assert proc.wait(timeout=120) == 0  # a bound on the wait: it exits once nothing is in flight
        drain.join(timeout=120)
        assert any("request " in line and "finish length" in line for line in log), "".join(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
