"""loomlm workers behind the real SGLang router (`sglang-router`): everything the router asks of a worker
(discovery, health, load, cache flush, the generation routes, streaming, request ids) works, greedy
outputs through the router equal direct ones, and cache-aware routing keeps each shared prefix on one
worker where round robin scatters it (counted in cached prompt tokens, not timed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import httpx
import pytest

import loomlm
from tests.conftest import NO_GRAMMAR_DEADLINE
from tests.runtime.server.routed import Routed
from tests.runtime.server.served import Served

pytest.importorskip("sglang_router", reason="sglang-router is in loomlm[router], which `make test` installs")

GREEDY = {"temperature": 0, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def workers():
    engines = [
        loomlm.Engine(max_total_tokens=8000, max_running_requests=16, grammar_timeout_s=NO_GRAMMAR_DEADLINE)
        for _ in range(2)
    ]
    with Served(engines[0], served_model_name="smol") as one, Served(engines[1], served_model_name="smol") as two:
        yield [one, two]
    for engine in engines:
        engine.idle_integrity()
        engine.shutdown()


def _stats(worker: Served) -> dict:
    return _stats_url(worker.url)


def test_worker_answers_what_the_router_reads(workers):
    with httpx.Client(base_url=workers[0].url) as http:
        info = http.get("/server_info").json()
        engine = workers[0].app.state.loomlm.engine
        assert info["model_path"] == str(engine.runner.model_path)
        assert info["served_model_name"] == "smol" and info["tp_size"] == 1 and info["dp_size"] == 1
        assert info["max_total_tokens"] == engine.runner.kv_pool.num_slots
        model = http.get("/model_info").json()
        assert model["model_type"] == "llama" and model["architectures"] == ["LlamaForCausalLM"]
        load = http.get("/get_load").json()
        assert isinstance(load, list) and load[0]["dp_rank"] == 0 and load[0]["num_tokens"] == 0


def test_generation_routes_through_the_router_match_direct_answers(workers):
    direct = httpx.post(f"{workers[0].url}/generate", json={"text": "The capital of France", "sampling_params": GREEDY})
    with Routed([w.url for w in workers], "round_robin") as router, httpx.Client(base_url=router.url) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["smol"]
        assert http.get("/get_model_info").json()["model_path"] == str(workers[0].app.state.loomlm.model_path)
        texts = set()
        for _ in range(2):  # round robin: once on each worker
            routed = http.post("/generate", json={"text": "The capital of France", "sampling_params": GREEDY})
            assert routed.status_code == 200, routed.text
            texts.add(routed.json()["text"])
        assert texts == {direct.json()["text"]}

        chat = {"model": "smol", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6, "temperature": 0}
        whole = http.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
        pieces = []
        with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    pieces.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
        assert "".join(pieces) == whole
        native = []
        body = {"text": "Count: 1, 2,", "sampling_params": GREEDY, "stream": True}
        with http.stream("POST", "/generate", json=body) as stream:
            native = [json.loads(x[6:]) for x in stream.iter_lines() if x.startswith("data: ") and x != "data: [DONE]"]
        assert len(native) >= 2 and native[-1]["meta_info"]["completion_tokens"] == GREEDY["max_new_tokens"]

        completion = http.post("/v1/completions", json={"model": "smol", "prompt": "Hello", "max_tokens": 3})
        assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 3


def test_request_ids_pass_through_the_router(workers):
    with Routed([w.url for w in workers], "round_robin") as router, httpx.Client(base_url=router.url) as http:
        body = {"text": "Hi", "sampling_params": GREEDY}
        by_header = http.post("/generate", json=body, headers={"X-Request-Id": "client-7"})
        assert by_header.json()["meta_info"]["id"] == "client-7"
        by_body = http.post("/generate", json={**body, "rid": "body-3"})
        assert by_body.json()["meta_info"]["id"] == "body-3"
        chat = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        answer = http.post("/v1/chat/completions", json=chat, headers={"X-Request-Id": "chat-9"})
        assert answer.status_code == 200
    hits = [w.bodies.get("/v1/chat/completions") for w in workers]
    assert any(h is not None and h.get("no_stop_trim") is False for h in hits)  # the router's own fields
    refused = httpx.post(f"{workers[0].url}/generate", json={**body, "return_hidden_states": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "return_hidden_states"


def test_flush_and_loads_through_the_router(workers):
    with Routed([w.url for w in workers], "round_robin") as router, httpx.Client(base_url=router.url) as http:
        for _ in range(2):
            http.post("/generate", json={"text": "Warm the cache up", "sampling_params": GREEDY})
        assert all(_stats(w)["cache_size"] > 0 for w in workers)
        loads = http.get("/get_loads").json()["workers"]
        assert sorted(x["worker"] for x in loads) == sorted(w.url for w in workers)
        assert all(x["load"] == 0 for x in loads)  # idle: no KV held by a running request
        flushed = http.post("/flush_cache").json()
        assert flushed["workers_flushed"] == 2
        assert all(_stats(w)["cache_size"] == 0 for w in workers)
        metrics = http.get("/engine_metrics").text  # the router's scrape of every worker's /metrics
        assert all(f'worker_addr="{w.url}"' in metrics for w in workers) and "loomlm_" in metrics


_GROUPS = 3  # odd, so round robin sends each group's requests to alternating workers
_PER_GROUP = 4


def _shared_prefix_run(router_url: str) -> list[str]:
    prefixes = [f"Document {g}: " + " ".join(f"w{g}x{i}" for i in range(120)) for g in range(_GROUPS)]
    texts = []
    with httpx.Client(base_url=router_url, timeout=120) as http:
        for i in range(_PER_GROUP):  # interleaved: g0, g1, g2, g0, ...
            for prefix in prefixes:
                body = {"text": f"{prefix}\nQuestion {i}: what is item {i}?", "sampling_params": GREEDY}
                answer = http.post("/generate", json=body)
                assert answer.status_code == 200, answer.text
                texts.append(answer.json()["text"])
    return texts


def test_cache_aware_routing_hits_the_cache_more_than_round_robin(workers):
    cached = {}
    outputs = {}
    for policy in ("round_robin", "cache_aware"):
        for w in workers:
            assert httpx.post(f"{w.url}/flush_cache").status_code == 200
        before = sum(_stats(w)["cached_prefill_tokens"] for w in workers)
        with Routed([w.url for w in workers], policy) as router:
            outputs[policy] = _shared_prefix_run(router.url)
        cached[policy] = sum(_stats(w)["cached_prefill_tokens"] for w in workers) - before
    assert outputs["cache_aware"] == outputs["round_robin"]  # greedy: routing changes no answer
    # cache-aware: each group's prefix is computed once, then hit (3 later requests per group);
    # round robin alternates workers, so each group's prefix is computed on both.
    assert cached["cache_aware"] > cached["round_robin"] > 0, cached


def test_a_worker_that_goes_away_leaves_its_requests_to_the_other(workers):
    engine = workers[1].app.state.loomlm.engine
    doomed = Served(engine, served_model_name="smol").__enter__()
    with Routed([workers[0].url, doomed.url], "round_robin") as router, httpx.Client(base_url=router.url) as http:
        assert http.post("/generate", json={"text": "Before", "sampling_params": GREEDY}).status_code == 200
        doomed.__exit__(None, None, None)  # its socket closes: connections are refused from now on
        served_before = _stats(workers[0])["requests_finished"]
        answers = [http.post("/generate", json={"text": f"After {i}", "sampling_params": GREEDY}) for i in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        assert _stats(workers[0])["requests_finished"] == served_before + 4


# A 2-layer model of the default's shape with random weights: a real worker process, started sooner.
_SMALL = ["--load-format", "dummy", "--json-model-override-args", '{"num_layers": 2}', "--cpu-linear", "torch"]


def _worker_process() -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "loomlm.runtime.server", "--port", "0", "--max-total-tokens", "2000", *_SMALL]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stderr:  # until it says where it listens
        if found := re.search(r"listening on (http://\S+)", line):
            threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()  # keep the pipe drained
            return proc, found.group(1)
    raise RuntimeError(f"the worker exited with {proc.wait()}")


def test_a_killed_worker_process_leaves_new_requests_to_the_other():
    procs = [_worker_process() for _ in range(2)]
    try:
        with Routed([url for _, url in procs], "round_robin") as router, httpx.Client(base_url=router.url) as http:
            body = {"text": "Count:", "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}, "stream": True}
            with http.stream("POST", "/generate", json=body) as running:  # in flight on one of the two
                events = running.iter_lines()
                assert next(events).startswith("data: ")
                victim = next(p for p, url in procs if _stats_url(url)["num_running_reqs"] == 1)
                victim.kill()
                victim.wait()
                rest: list[str] = []
                with pytest.raises(httpx.RemoteProtocolError):  # the router cannot move a stream half sent
                    rest.extend(events)
            assert "data: [DONE]" not in rest
            survivor = next(url for p, url in procs if p is not victim)
            done_before = _stats_url(survivor)["requests_finished"]
            answers = [http.post("/generate", json={"text": f"After {i}", "sampling_params": GREEDY}) for i in range(4)]
            assert [a.status_code for a in answers] == [200] * 4
            assert _stats_url(survivor)["requests_finished"] == done_before + 4
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)


def _stats_url(url: str) -> dict:
    return httpx.get(f"{url}/get_load").json()[0]
