"""SGLang's native API and the server's guards (API key, body size, load shedding), over loopback."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx

import loomlm
from tests.runtime.server.served import Served

GREEDY = {"max_new_tokens": 6, "temperature": 0}


def _events(response: httpx.Response) -> list:
    lines = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_generate_plain_streamed_and_batched(engine):
    with Served(engine) as server, httpx.Client(base_url=server.url) as http:
        plain = http.post("/generate", json={"text": "Hello", "sampling_params": GREEDY}).json()
        assert plain["meta_info"]["completion_tokens"] == 6 and plain["text"]
        with http.stream("POST", "/generate", json={"text": "Hello", "sampling_params": GREEDY, "stream": True}) as r:
            events = _events(r)
        assert events[-1]["text"] == plain["text"] and events[-1]["output_ids"] == plain["output_ids"]
        assert all(b["text"].startswith(a["text"]) for a, b in zip(events, events[1:]))  # cumulative, as SGLang's
        batch = http.post(
            "/generate", json={"input_ids": [[1, 2, 3], [4, 5]], "sampling_params": GREEDY, "return_logprob": True}
        ).json()
        assert [len(o["meta_info"]["output_token_logprobs"]) for o in batch] == [6, 6]
        ids = http.post("/tokenize", json={"text": "Hello world"}).json()["tokens"]
        assert http.post("/detokenize", json={"tokens": ids}).json()["text"] == "Hello world"
        assert http.get("/get_model_info").json()["is_generation"] is True
        assert http.get("/health").status_code == 200 and http.get("/health_generate").status_code == 200
        assert http.get("/get_server_info").json()["context_length"] == engine.context_length
        assert http.get("/get_load").json()[0]["num_running_reqs"] == 0
        assert http.post("/generate", json={"text": "x", "input_ids": [1]}).status_code == 400
        assert http.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokns": 2}}).status_code == 400
    engine.idle_integrity()


def test_api_key_guards_every_route_but_health(engine):
    with Served(engine, api_key="s3cret") as server:
        assert httpx.get(server.url + "/health").status_code == 200
        for path in ("/v1/models", "//v1/models", "/v1/%6Dodels", "/get_model_info", "/health_generate", "/metrics"):
            answer = httpx.get(server.url + path)
            assert answer.status_code == 401, path
            assert answer.json()["error"]["type"] == "authentication_error"
        wrong = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401
        right = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json()["data"][0]["object"] == "model"


def test_oversized_bodies_are_413(engine):
    with Served(engine, max_request_bytes=1000) as server:
        answer = httpx.post(server.url + "/v1/completions", json={"prompt": "x" * 2000, "max_tokens": 1})
        assert answer.status_code == 413 and "1000 bytes" in answer.json()["error"]["message"]


def test_a_full_queue_sheds_load_and_disconnects_free_everything(engine):
    """One running and one queued request fill the server; eight more get 503 with Retry-After. The
    running one is a long stream held open and the queued one is seen waiting in the engine before the
    eight are sent, so the count does not depend on timing; closing the stream mid-way (the client going
    away) aborts it and frees its KV, and the queued request then runs."""
    small = loomlm.Engine(max_total_tokens=4000, max_running_requests=1, random_seed=1)
    try:
        with Served(small, max_queued_requests=1) as server, httpx.Client(base_url=server.url, timeout=120) as http:
            body = {"text": "Count:", "sampling_params": {"max_new_tokens": 1500, "ignore_eos": True}, "stream": True}
            with http.stream("POST", "/generate", json=body) as running:
                events = running.iter_lines()  # kept: a dropped iterator would close the response
                assert next(events).startswith("data: ")  # it has started
                with ThreadPoolExecutor(1) as pool:
                    queued = pool.submit(http.post, "/generate", json={"text": "hi", "sampling_params": GREEDY})
                    for _ in range(10_000):  # until the engine holds it as waiting (a bound, not a timer)
                        if http.get("/get_load").json()[0]["num_waiting_reqs"] == 1:
                            break
                    shed = [http.post("/generate", json={"text": "hi", "sampling_params": GREEDY}) for _ in range(8)]
                    assert [s.status_code for s in shed] == [503] * 8
                    assert shed[0].headers["Retry-After"] == "1" and "capacity" in shed[0].json()["error"]["message"]
                    running.close()  # the client goes away mid-stream
                    assert queued.result().status_code == 200
            for _ in range(10_000):
                if http.get("/get_load").json()[0]["num_reqs"] == 0:
                    break
            assert http.get("/get_load").json()[0]["num_reqs"] == 0
        small.idle_integrity()
    finally:
        small.shutdown()


def test_sigterm_drains_in_flight_requests_then_exits(engine):
    """The first SIGTERM (uvicorn's handler calls `handle_exit`): new generation requests get 503 and
    /health turns 503, the stream in flight runs to its end, and the server then exits by itself."""
    with Served(engine) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        body = {"text": "Count:", "sampling_params": {"max_new_tokens": 24, "ignore_eos": True}, "stream": True}
        with http.stream("POST", "/generate", json=body) as running:
            events = running.iter_lines()
            assert next(events).startswith("data: ")
            server.server.handle_exit(signal.SIGTERM, None)
            refused = http.post("/generate", json={"text": "hi", "sampling_params": GREEDY})
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
            assert http.get("/health").status_code == 503
            rest = [line for line in events if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["meta_info"]["completion_tokens"] == 24
        server.thread.join(timeout=120)  # a bound on the wait: it exits once nothing is in flight
        assert not server.thread.is_alive()
    engine.idle_integrity()


def test_requests_that_fan_out_past_the_cap_are_400(engine):
    """prompts x n engine requests per HTTP request are capped (--max-batch-requests): a request for a
    million copies is refused by name before anything is tokenised or queued."""
    with Served(engine, max_batch_requests=4) as server, httpx.Client(base_url=server.url) as http:
        wide = http.post("/v1/completions", json={"prompt": ["a", "b", "c"], "n": 2, "max_tokens": 1})
        assert wide.status_code == 400 and "max-batch-requests" in wide.json()["error"]["message"]
        huge = http.post("/generate", json={"text": "a", "sampling_params": {"n": 10**6, "max_new_tokens": 1}})
        assert huge.status_code == 400 and "1000000 generations" in huge.json()["error"]["message"]
        many = http.post("/generate", json={"input_ids": [[1]] * 5, "sampling_params": {"max_new_tokens": 1}})
        assert many.status_code == 400
        fits = http.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 1})
        assert fits.status_code == 200 and len(fits.json()["choices"]) == 4
    engine.idle_integrity()
