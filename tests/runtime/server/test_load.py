"""The server under concurrent load and clients that go away: every stream well formed, nothing left
running or holding KV afterwards. Waits are bounded by poll counts of the server's own state, never by a
timed assertion."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.runtime.server.served import Served

_POLLS = 6000  # 10 ms apart: a bound on a wait for server state, not a timed check


async def _raw_chat_stream(http: httpx.AsyncClient, i: int) -> list:
    """A streamed chat read as raw SSE lines: (events as JSON, the last data line)."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": f"Tell me one fact about the number {i}."}],
        "max_tokens": 6 + i % 7,
        "temperature": 0 if i % 2 else 0.7,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: ") :] async for line in answer.aiter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
    return [json.loads(d) for d in data[:-1]]


def _check_well_formed(events: list, max_tokens: int) -> None:
    assert len({e["id"] for e in events}) == 1 and all(e["object"] == "chat.completion.chunk" for e in events)
    *chunks, usage = events
    assert usage["choices"] == [] and 0 < usage["usage"]["completion_tokens"] <= max_tokens
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]
    assert all(len(c["choices"]) == 1 and c["choices"][0]["index"] == 0 for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert all(c.get("usage") is None for c in chunks)


async def _wait_idle(http: httpx.AsyncClient) -> dict:
    for _ in range(_POLLS):
        load = (await http.get("/get_load")).json()[0]
        if load["num_reqs"] == 0:
            return load
        await asyncio.sleep(0.01)
    return load


def test_64_concurrent_streaming_chats_complete_well_formed(engine):
    """64 streams at once over a 32-request engine (half wait in its queue): each is one id, a first
    delta with the role, one finish reason on its last choice chunk, a usage chunk, then [DONE]."""

    async def run(url: str) -> tuple[list, dict]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
            streams = await asyncio.gather(*(_raw_chat_stream(http, i) for i in range(64)))
            return streams, await _wait_idle(http)

    with Served(engine) as server:
        streams, load = asyncio.run(run(server.url))
    for i, events in enumerate(streams):
        _check_well_formed(events, 6 + i % 7)
    assert load["num_running_reqs"] == 0 and load["num_waiting_reqs"] == 0
    assert load["kv_pool_used"] == load["cache_size"]  # KV in use is the prefix cache's share, nothing more
    engine.idle_integrity()


def test_50_clients_that_disconnect_mid_stream_leave_nothing_behind(engine):
    """Each client reads the first chunk of a long stream and closes the connection: every request is
    aborted, its KV freed, and the server goes on serving."""
    decoded_before = engine.get_stats()["decode_tokens"]

    async def one(http: httpx.AsyncClient, i: int) -> bool:
        body = {
            "model": "m",
            "prompt": f"Count from {i}:",
            "max_tokens": 300,
            "ignore_eos": True,
            "stream": True,
        }
        async with http.stream("POST", "/v1/completions", json=body) as answer:
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    return "choices" in json.loads(line[6:])  # leaving the block closes the connection
        return False

    async def run(url: str) -> tuple[list[bool], dict, int]:
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=64)) as http:
            started = await asyncio.gather(*(one(http, i) for i in range(50)))
            load = await _wait_idle(http)
            after = await http.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 3})
            return started, load, after.status_code

    with Served(engine) as server:
        started, load, after = asyncio.run(run(server.url))
    assert all(started) and load["num_reqs"] == 0 and after == 200
    assert engine.get_stats()["decode_tokens"] - decoded_before < 50 * 299 // 2  # they did not run to the end
    engine.idle_integrity()


def test_non_streamed_clients_that_go_away_abort_their_requests(engine):
    """A non-streamed answer sends nothing until it is done; its client giving up (closing the
    connection) must still abort the request rather than leave it decoding for nobody."""
    decoded_before = engine.get_stats()["decode_tokens"]
    bodies = [
        ("/generate", {"text": "Count:", "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}),
        ("/v1/completions", {"model": "m", "prompt": "Count:", "max_tokens": 2000, "ignore_eos": True}),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "Count"}], "max_tokens": 2000, "ignore_eos": True},
        ),
    ]

    async def run(url: str) -> tuple[dict, dict]:
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            tasks = [asyncio.create_task(http.post(path, json=body)) for path, body in bodies]
            for _ in range(_POLLS):  # until all three are decoding
                seen = (await http.get("/get_load")).json()[0]
                if seen["num_running_reqs"] == len(bodies):
                    break
                await asyncio.sleep(0.01)
            for task in tasks:
                task.cancel()  # the client gives up: httpx closes those connections
            await asyncio.gather(*tasks, return_exceptions=True)
            return seen, await _wait_idle(http)

    with Served(engine) as server:
        seen, load = asyncio.run(run(server.url))
    assert seen["num_running_reqs"] == 3 and load["num_reqs"] == 0
    assert engine.get_stats()["decode_tokens"] - decoded_before < 3 * 1999
    engine.idle_integrity()
