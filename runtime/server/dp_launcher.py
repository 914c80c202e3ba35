"""`loomlm serve --dp-size N`: N single-engine servers behind the SGLang router, supervised as one process.

The launcher starts N workers (`python -m loomlm.runtime.server` with the user's engine and server flags,
each on its own free loopback port, with its share of the CPU cores or its own GPUs), waits until each
answers `/health`, then starts `sglang_router.launch_router` on the user's `--host/--port` in front of
them and logs `listening on URL` once the router has registered every worker. From then on it only
watches: a child that exits stops everything (exit 1); SIGTERM or SIGINT stops the router, then the
workers (each drains; SIGKILL after a grace period), reaps them and exits 0. Every child gets
PR_SET_PDEATHSIG, so they die with the launcher even if it is SIGKILLed. Workers' stderr is forwarded
with a `[worker i] ` prefix, less their own `listening on` line (the launcher's log has one: the router's).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import http.client
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

logger = logging.getLogger("loomlm.server")

ROUTER_POLICIES = ("cache_aware", "round_robin", "power_of_two", "random")
HELP = {
    "dp_size": "data parallelism: serve N engine processes behind the SGLang router (pip install sglang-router)",
    "router_policy": f"how the router picks a worker when --dp-size > 1: {', '.join(ROUTER_POLICIES)}",
}
_WORKER_HOST = "127.0.0.1"
_CPU_KV_SHARE = 0.25  # EngineConfig's CPU default of mem_fraction_static (runtime/config.py), split between workers
_POLL_S = 0.25  # between start-up probes and between checks on the children
_GRACE_S = 30.0  # a child's time to stop (drain) after SIGTERM before SIGKILL
_WORKER_LISTENING = re.compile(r"loomlm\.server listening on http://\S+\s*$")
_PR_SET_PDEATHSIG = 1
_PRCTL: Any = None
if sys.platform.startswith("linux"):  # loaded in the launcher, so a child only calls it before exec
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    _PRCTL.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _PRCTL.restype = ctypes.c_int


@dataclass(frozen=True)
class DataParallelConfig:
    dp_size: int = 1
    router_policy: str = "cache_aware"

    def __post_init__(self) -> None:
        if not isinstance(self.dp_size, int) or isinstance(self.dp_size, bool) or self.dp_size <= 0:
            raise ValueError(f"dp_size must be a positive integer, got {self.dp_size!r}")
        if self.router_policy not in ROUTER_POLICIES:
            raise ValueError(f"router_policy must be one of {', '.join(ROUTER_POLICIES)}, got {self.router_policy!r}")


def split_cpus(cpus: Sequence[int], parts: int) -> list[list[int]]:
    """`cpus` (sorted) in `parts` contiguous chunks whose sizes differ by at most one (larger ones first)."""
    ordered = sorted(cpus)
    if parts > len(ordered):
        raise ValueError(f"dp_size {parts} exceeds the {len(ordered)} CPU cores this process may use")
    size, extra = divmod(len(ordered), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [ordered[bounds[i] : bounds[i + 1]] for i in range(parts)]


def split_gpus(gpus: Sequence[str], parts: int, per_part: int) -> list[list[str]]:
    """`per_part` GPU ids (CUDA_VISIBLE_DEVICES entries) for each of `parts` workers."""
    if parts * per_part > len(gpus):
        raise ValueError(f"dp_size {parts} x tp_size {per_part} needs {parts * per_part} GPUs, {len(gpus)} visible")
    return [list(gpus[i * per_part : (i + 1) * per_part]) for i in range(parts)]


def _flags(config: Any, skip: set[str]) -> list[str]:
    """`--field=value` for each field of the dataclass `config` that differs from its default."""
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in skip or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            raise ValueError(f"{f.name}=None cannot be passed as a flag (its default is {f.default!r})")
        else:
            out.append(f"{flag}={value}")
    return out


def worker_argv(engine: Any, server: Any, *, port: int, cpu_threads: int | None = None) -> list[str]:
    """The flags of one worker's `python -m loomlm.runtime.server`: the engine's and server's fields that
    differ from their defaults, on `127.0.0.1:port`; `cpu_threads` unless the user gave `--cpu-threads`."""
    if cpu_threads is not None and getattr(engine, "cpu_threads", None) is None:
        engine = dataclasses.replace(engine, cpu_threads=cpu_threads)
    return ["--host", _WORKER_HOST, "--port", str(port), *_flags(engine, set()), *_flags(server, {"host", "port"})]


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports free on `host` now (all held until all are picked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _get(url: str) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, http.client.HTTPException):
        return 0, b""


def _router_ready(url: str, workers: int) -> bool:
    """The router answers /readiness (or /health) 200, having registered every worker where it says."""
    status, body = _get(url + "/readiness")
    if status == 404:
        return _get(url + "/health")[0] == 200
    try:
        healthy = int(json.loads(body).get("healthy_workers", workers))
    except (ValueError, AttributeError, TypeError):  # not JSON, or not an object: the status says it all
        healthy = workers
    return status == 200 and healthy >= workers


def _in_child(parent: int, cpus: list[int] | None) -> None:
    """Between fork and exec (preexec_fn): die with the launcher; keep to this worker's cores."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl
            os._exit(1)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def _visible_gpus() -> list[str]:
    """The GPUs workers may use (CUDA_VISIBLE_DEVICES's entries, else all); [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible is not None else map(str, range(torch.cuda.device_count()))
    return [g.strip() for g in ids if g.strip()]


def _forward(stream: IO[str], prefix: str) -> None:
    for line in stream:
        if not _WORKER_LISTENING.search(line):
            sys.stderr.write(prefix + line)
            sys.stderr.flush()


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    url: str


class DataParallelLauncher:
    """Starts, watches and stops the workers and the router; `run()` is the launcher's exit code."""

    def __init__(self, dp: DataParallelConfig, engine: Any, server: Any, *, startup_timeout_s: float = 600.0):
        self.dp, self.engine, self.server = dp, engine, server
        self.startup_timeout_s = startup_timeout_s
        self.workers: list[_Child] = []
        self.router: _Child | None = None
        self._router_port = 0
        self._healthy: set[str] = set()
        self.stop_signal: int | None = None
        self._threads: list[threading.Thread] = []

    def placements(self) -> list[tuple[str, list[str] | list[int]]]:
        """("gpus", ids) or ("cpus", cores) per worker; ValueError when there are too few."""
        device = self.engine.device
        if device.startswith("cuda:"):
            raise ValueError(f"device {device!r} cannot be split between workers: use --device cuda")
        gpus = _visible_gpus() if device in ("auto", "cuda") else []
        if device == "cuda" or gpus:
            return [("gpus", ids) for ids in split_gpus(gpus, self.dp.dp_size, getattr(self.engine, "tp_size", 1))]
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        return [("cpus", chunk) for chunk in split_cpus(list(cpus), self.dp.dp_size)]

    def run(self) -> int:
        try:
            placements = self.placements()
        except ValueError as exc:
            print(f"loomlm serve: {exc}", file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self._start_workers(placements)
            if self._wait(self._workers_healthy, "workers"):
                router_url = self._start_router()
                if self._wait(lambda: _router_ready(router_url, len(self.workers)), "router"):
                    logger.info("listening on %s", _url(self.server.host, self._router_port))
                    while self.stop_signal is None and not self._any_exited():
                        time.sleep(_POLL_S)
            return 0 if self.stop_signal is not None else 1  # stopped by a signal, or a child exited
        finally:
            self._stop_all()

    def _workers_healthy(self) -> bool:
        """Every worker has answered /health 200 (each probed until it has, then left alone)."""
        for worker in self.workers:
            if worker.url not in self._healthy and _get(worker.url + "/health")[0] == 200:
                self._healthy.add(worker.url)
        return len(self._healthy) == len(self.workers)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            logger.info("%s: stopping the router, then the workers", signal.Signals(sig).name)
        self.stop_signal = sig

    def _start_workers(self, placements: list[tuple[str, list[str] | list[int]]]) -> None:
        engine = self.engine
        if placements[0][0] == "cpus" and engine.max_total_tokens is None and engine.mem_fraction_static is None:
            engine = dataclasses.replace(engine, mem_fraction_static=_CPU_KV_SHARE / len(placements))
        parent = os.getpid()
        for i, (port, (kind, ids)) in enumerate(zip(_free_ports(_WORKER_HOST, len(placements)), placements)):
            on_cpu = kind == "cpus"
            argv = worker_argv(engine, self.server, port=port, cpu_threads=len(ids) if on_cpu else None)
            env = dict(os.environ) if on_cpu else {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, ids))}
            proc = subprocess.Popen(
                [sys.executable, "-m", "loomlm.runtime.server", *argv],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                preexec_fn=functools.partial(_in_child, parent, list(ids) if on_cpu else None),
            )
            worker = _Child(f"worker {i}", proc, _url(_WORKER_HOST, port))
            self.workers.append(worker)
            logger.info("worker %d: pid %d, %s, %s [%s]", i, proc.pid, worker.url, kind, ", ".join(map(str, ids)))
        for worker in self.workers:  # after every fork: no thread runs while a preexec_fn does
            thread = threading.Thread(target=_forward, args=(worker.proc.stderr, f"[{worker.name}] "), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _start_router(self) -> str:
        host = self.server.host
        self._router_port, metrics_port = _free_ports(host, 2)
        if self.server.port:
            self._router_port = self.server.port
        command = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls"]
        command += [w.url for w in self.workers] + ["--policy", self.dp.router_policy]
        command += ["--host", host, "--port", str(self._router_port)]
        command += ["--prometheus-host", host, "--prometheus-port", str(metrics_port), "--log-level", "warn"]
        command += ["--shutdown-grace-period-secs", str(int(_GRACE_S))]
        command += ["--api-key", self.server.api_key] if self.server.api_key else []
        proc = subprocess.Popen(command, preexec_fn=functools.partial(_in_child, os.getpid(), None))
        local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        self.router = _Child("router", proc, _url(local, self._router_port))
        logger.info("router: pid %d, %s, policy %s", proc.pid, self.router.url, self.dp.router_policy)
        return self.router.url

    def _any_exited(self) -> bool:
        for child in ([self.router] if self.router else []) + self.workers:
            code = child.proc.poll()
            if code is not None:
                logger.error("%s (pid %d) exited with code %d; stopping", child.name, child.proc.pid, code)
                return True
        return False

    def _wait(self, ready: Callable[[], bool], what: str) -> bool:
        """Until `ready()`; False when a child exits, a signal comes or the start-up timeout passes."""
        deadline = time.monotonic() + self.startup_timeout_s
        while self.stop_signal is None and not self._any_exited():
            if ready():
                return True
            if time.monotonic() > deadline:
                logger.error("%s not ready after %.0f s; stopping", what, self.startup_timeout_s)
                return False
            time.sleep(_POLL_S)
        return False

    def _stop_all(self) -> None:
        """The router first (no new requests), then the workers (each drains); every child reaped."""
        for group in ([self.router] if self.router else [], self.workers):
            for child in group:
                if child.proc.poll() is None:
                    child.proc.terminate()
            for child in group:
                try:
                    child.proc.wait(timeout=_GRACE_S)
                except subprocess.TimeoutExpired:
                    logger.warning("%s (pid %d) still up after %.0f s: SIGKILL", child.name, child.proc.pid, _GRACE_S)
                    child.proc.kill()
                    child.proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)


def _router_installed() -> bool:
    return importlib.util.find_spec("sglang_router") is not None


def launch_data_parallel(dp: DataParallelConfig, engine: Any, server: Any) -> int:
    """`loomlm serve --dp-size N` (N > 1): the launcher's exit code (2: a usage error, nothing started)."""
    if not _router_installed():
        print(
            "loomlm serve: --dp-size > 1 needs the SGLang router: pip install 'loomlm[router]' "
            "(or pip install sglang-router)",
            file=sys.stderr,
        )
        return 2
    return DataParallelLauncher(dp, engine, server).run()
