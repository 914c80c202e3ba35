"""A real loomlm server on loopback for tests: uvicorn on a free port, in a thread, over an engine.

Test instruments wrap the real app without changing it: `hits` counts requests per path and `bodies`
keeps the last JSON body per path (what a client sent); `shift_input_logprobs=True` makes `/generate`
answers leave out the entry at `logprob_start_len` itself, as some SGLang versions do, so clients can
be tested against both.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from typing import Any

import uvicorn

from loomlm.runtime.server import ServerConfig, build_app
from loomlm.runtime.server.lifecycle import GracefulServer

_START_POLLS = 6000  # 10 ms polls while uvicorn binds its socket (a bound on the wait, not a timed check)


class Served:
    """`with Served(engine, **server_config) as server:` serves at `server.url` until the block ends."""

    def __init__(self, engine: Any, shift_input_logprobs: bool = False, **config: Any):
        self.app = build_app(engine, ServerConfig(port=0, **config))
        self.hits: collections.Counter = collections.Counter()
        self.bodies: dict[str, Any] = {}
        self.shift_input_logprobs = shift_input_logprobs
        config = uvicorn.Config(self._instrumented, host="127.0.0.1", port=0, log_level="warning", interface="asgi3")
        self.server = GracefulServer(config, self.app.state.loomlm)
        self.thread = threading.Thread(target=self.server.run, name="served", daemon=True)
        self.url = ""

    async def _instrumented(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, chunks = scope["path"], []

        async def recording() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.hits[path] += 1
                    self.bodies[path] = json.loads(b"".join(chunks) or b"null")
            return message

        if not (self.shift_input_logprobs and path == "/generate"):
            await self.app(scope, recording, send)
            return
        held: list[dict] = []

        async def shifting(message: dict) -> None:  # rewrite whole JSON answers (not streams)
            held.append(message)
            if message["type"] != "http.response.body" or message.get("more_body"):
                return
            start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
            if dict(start["headers"]).get(b"content-type", b"").startswith(b"application/json"):
                answer = json.loads(body)
                for out in answer if isinstance(answer, list) else [answer]:
                    meta = out.get("meta_info", {})
                    if meta.get("input_token_logprobs"):
                        meta["input_token_logprobs"] = meta["input_token_logprobs"][1:]
                body = json.dumps(answer).encode()
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                start = {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, recording, shifting)

    def __enter__(self) -> Served:
        self.thread.start()
        for _ in range(_START_POLLS):
            if self.server.started:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError("uvicorn did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join()
