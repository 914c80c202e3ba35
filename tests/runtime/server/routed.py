"""The SGLang router (`sglang-router`, the Rust package on PyPI) in front of loomlm workers, for tests:
a real `python -m sglang_router.launch_router` process on free loopback ports."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

_READY_POLLS = 3000  # 20 ms polls until the router has registered every worker (a bound, not a timed check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Routed:
    """`with Routed(urls, policy) as router:` the router answers at `router.url` until the block ends."""

    def __init__(self, worker_urls: list[str], policy: str = "cache_aware", *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.command = [
            sys.executable,
            "-m",
            "sglang_router.launch_router",
            "--worker-urls",
            *worker_urls,
            "--policy",
            policy,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--prometheus-port",
            str(free_port()),
            "--log-level",
            "warn",
            *extra,
        ]
        self.workers = len(worker_urls)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Routed:
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        with httpx.Client(base_url=self.url, timeout=10) as http:
            for _ in range(_READY_POLLS):
                if self.proc.poll() is not None:
                    break
                try:
                    ready = http.get("/readiness")
                    if ready.status_code == 200 and ready.json().get("healthy_workers") == self.workers:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        self.__exit__()
        self.log.seek(0)
        raise RuntimeError(f"the router did not become ready:\n{self.log.read()[-4000:]}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
