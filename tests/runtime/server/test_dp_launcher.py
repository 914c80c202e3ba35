"""`loomlm serve --dp-size N`: the launcher's pure parts (worker flags, its config, the core split), then
real launchers (`python -m loomlm.runtime.server --dp-size 2`: two workers and the SGLang router on
loopback): requests spread over both workers, a worker that dies stops everything (exit 1), SIGTERM
stops everything (exit 0), and the children die with a SIGKILLed launcher. Every wait is bounded by a
count or a generous timeout, never a timed assertion."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from loomlm.runtime.arg_parser import config_from_args, engine_config_from_args
from loomlm.runtime.config import EngineConfig
from loomlm.runtime.server import dp_launcher
from loomlm.runtime.server.config import ServerConfig
from loomlm.runtime.server.dp_launcher import DataParallelConfig, split_cpus, split_gpus, worker_argv
from loomlm.runtime.server.launch import build_parser, main

_LISTENING = re.compile(r"listening on (http://\S+)")
_WORKER = re.compile(r"worker (\d+): pid (\d+), (http://\S+), cpus \[([\d, ]*)\]")
_ROUTER = re.compile(r"router: pid (\d+), ")
# A 2-layer model of the default's shape with random weights: the same processes, seconds sooner.
_SMALL = ["--load-format", "dummy", "--json-model-override-args", '{"num_layers": 2}', "--cpu-linear", "torch"]
_GONE_POLLS = 2000  # 10 ms polls while orphaned children drain and exit (a bound, not a timed check)


def test_worker_argv_keeps_engine_and_server_flags_and_drops_the_launchers():
    user = ["--dp-size", "2", "--router-policy", "round_robin", "--host", "0.0.0.0", "--port", "0"]
    user += ["--max-total-tokens", "4000", "--chunked-prefill-size", "-1", "--grammar-timeout-s", "2.5"]
    user += ["--no-log-requests", "--api-key", "k", "--json-model-override-args", '{"num_layers": 2}']
    args = build_parser().parse_args(user)
    engine, server = engine_config_from_args(args), config_from_args(ServerConfig, args)
    argv = worker_argv(engine, server, port=4321, cpu_threads=3)
    assert argv[:4] == ["--host", "127.0.0.1", "--port", "4321"]
    assert not any(flag.startswith(("--dp-size", "--router-policy")) for flag in argv)
    again = build_parser().parse_args(argv)
    assert engine_config_from_args(again) == dataclasses.replace(engine, cpu_threads=3)
    assert config_from_args(ServerConfig, again) == dataclasses.replace(server, host="127.0.0.1", port=4321)
    assert config_from_args(DataParallelConfig, again) == DataParallelConfig()
    explicit = EngineConfig(cpu_threads=5)  # the user's --cpu-threads wins over the worker's share
    assert worker_argv(explicit, ServerConfig(), port=1, cpu_threads=3) == ["--host", "127.0.0.1", "--port", "1"] + [
        "--cpu-threads=5"
    ]
    assert worker_argv(EngineConfig(), ServerConfig(), port=1) == ["--host", "127.0.0.1", "--port", "1"]


def test_data_parallel_config_names_the_bad_field():
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="dp_size must be a positive integer"):
            DataParallelConfig(dp_size=bad)
    with pytest.raises(ValueError, match="router_policy must be one of cache_aware, round_robin"):
        DataParallelConfig(router_policy="fastest")
    assert DataParallelConfig(4, "power_of_two").router_policy == "power_of_two"


def test_cores_split_into_contiguous_even_chunks():
    assert split_cpus([6, 0, 1, 2, 5, 4, 3], 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_cpus(range(4), 4) == [[0], [1], [2], [3]]
    assert split_cpus([8, 9], 1) == [[8, 9]]
    with pytest.raises(ValueError, match="dp_size 5 exceeds the 4 CPU cores"):
        split_cpus(range(4), 5)
    assert split_gpus(["0", "1", "2", "3"], 2, 2) == [["0", "1"], ["2", "3"]]
    with pytest.raises(ValueError, match="needs 4 GPUs, 3 visible"):
        split_gpus(["0", "1", "2"], 2, 2)


def test_usage_errors_exit_2_before_anything_starts(capsys, monkeypatch):
    assert main(["--dp-size", "0"]) == 2
    assert "dp_size must be a positive integer" in capsys.readouterr().err
    monkeypatch.setattr(dp_launcher, "_router_installed", lambda: True)
    assert main(["--dp-size", "2", "--device", "cuda:1"]) == 2
    assert "device 'cuda:1' cannot be split between workers" in capsys.readouterr().err
    cores = len(os.sched_getaffinity(0))
    assert main(["--dp-size", str(cores + 1), "--device", "cpu"]) == 2
    assert f"exceeds the {cores} CPU cores" in capsys.readouterr().err
    monkeypatch.setattr(dp_launcher, "_router_installed", lambda: False)
    assert main(["--dp-size", "2"]) == 2
    assert "pip install sglang-router" in capsys.readouterr().err


class Launched:
    """A real launcher process: its log (read in a thread), the router's URL, its children's pids."""

    def __init__(self, *flags: str):
        pytest.importorskip("sglang_router", reason="sglang-router is in loomlm[router], which `make test` installs")
        command = [sys.executable, "-m", "loomlm.runtime.server", "--dp-size", "2", "--port", "0", *flags]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        for line in self.proc.stderr:  # until the launcher says where the router listens (or it ends)
            self.log.append(line)
            if found := _LISTENING.search(line):
                break
        else:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("".join(self.log))
        self.url = found.group(1)
        self.workers = [m.groups() for line in self.log if (m := _WORKER.search(line))]
        self.worker_pids = [int(pid) for _, pid, _, _ in self.workers]
        self.worker_urls = [url for _, _, url, _ in self.workers]
        self.router_pid = int(next(m.group(1) for line in self.log if (m := _ROUTER.search(line))))
        self.drain = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self.drain.start()  # keep reading, so the launcher never blocks on a full pipe

    def children(self) -> list[int]:
        return [*self.worker_pids, self.router_pid]

    def exit_code(self) -> int:
        code = self.proc.wait(timeout=120)  # a bound on the wait
        self.drain.join(timeout=120)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.children():  # never leave a worker behind a failed test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


def _reaped(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return not Path(f"/proc/{pid}").exists()
    return False


def test_requests_reach_both_workers_and_a_dead_worker_stops_the_launcher():
    launched = Launched("--router-policy", "round_robin", "--max-total-tokens", "4000")
    try:
        assert [int(index) for index, _, _, _ in launched.workers] == [0, 1]
        cpus = [{int(c) for c in found.split(",")} for _, _, _, found in launched.workers]
        assert not cpus[0] & cpus[1] and len(cpus[0]) >= 1 and len(cpus[1]) >= 1
        with httpx.Client(base_url=launched.url, timeout=120) as http:
            body = {"text": "The capital of France is", "sampling_params": {"temperature": 0, "max_new_tokens": 4}}
            answers = [http.post("/generate", json=body) for _ in range(4)]
            assert [a.status_code for a in answers] == [200] * 4 and all(a.json()["text"] for a in answers)
            assert len({a.json()["text"] for a in answers}) == 1  # the same greedy answer on both workers
            finished = [httpx.get(f"{url}/get_load").json()[0]["requests_finished"] for url in launched.worker_urls]
            assert finished == [2, 2], finished  # round robin: both workers served
            model = httpx.get(f"{launched.worker_urls[0]}/v1/models").json()["data"][0]["id"]
            assert model in [m["id"] for m in http.get("/v1/models").json()["data"]]
        dead = launched.worker_pids[1]
        os.kill(dead, signal.SIGKILL)
        assert launched.exit_code() == 1
        assert any(f"worker 1 (pid {dead}) exited with code -9; stopping" in line for line in launched.log)
        assert all(_reaped(pid) for pid in launched.children()), "".join(launched.log)
    finally:
        launched.close()


def test_sigterm_stops_the_router_and_workers_then_exits_zero():
    launched = Launched("--max-total-tokens", "4000", *_SMALL)
    try:
        for _, pid, _, cpus in launched.workers:  # each pinned to its own cores, with as many threads
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            assert os.sched_getaffinity(int(pid)) == {int(c) for c in cpus.split(",")}
            assert f"--cpu-threads={len(cpus.split(','))}" in argv and "--load-format=dummy" in argv
            assert not any(a.startswith(("--dp-size", "--router-policy")) for a in argv), argv
            assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] != "0"
        assert httpx.get(f"{launched.url}/health").status_code == 200
        launched.proc.send_signal(signal.SIGTERM)
        assert launched.exit_code() == 0, "".join(launched.log)
        assert all(_reaped(pid) for pid in launched.children()), "".join(launched.log)
        assert sum("listening on" in line for line in launched.log) == 1  # the router's; not the workers'
    finally:
        launched.close()


def test_children_die_with_a_sigkilled_launcher():
    launched = Launched("--max-total-tokens", "4000", *_SMALL)
    try:
        launched.proc.kill()  # no handler runs: PR_SET_PDEATHSIG sends each child SIGTERM
        launched.proc.wait()
        for _ in range(_GONE_POLLS):
            if not any(_alive(pid) for pid in launched.children()):
                break
            time.sleep(0.01)
        assert not any(_alive(pid) for pid in launched.children())
    finally:
        launched.close()
