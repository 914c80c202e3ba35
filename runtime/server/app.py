"""The ASGI app: `build_app(engine, config)` mounts the native and OpenAI routes over one engine.

Every request passes one middleware first: the body-size cap (413, read from Content-Length and while
the body streams in); with `config.api_key`, the bearer key on every path but `/health` (compared in
constant time; the check uses the raw path as received, so `//v1/models` or percent-encoded paths are no
way around it); load shedding of generation requests (503 with `Retry-After` once more than
`max_running_requests + max_queued_requests` are in flight, a streamed one until its stream ends); and,
with `log_requests`, one log line per request. Errors are OpenAI-shaped everywhere (`errors.py`).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loomlm.runtime.server.config import ServerConfig
from loomlm.runtime.server.errors import error_response, install_error_handlers
from loomlm.runtime.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from loomlm.runtime.server.metrics import ServerMetrics
from loomlm.runtime.server.native_routes import native_router
from loomlm.runtime.server.openai_routes import openai_router
from loomlm.runtime.server.state import ServerState

_OPEN_PATHS = frozenset({"/health"})
_GENERATION_PATHS = frozenset({"/generate", "/v1/completions", "/v1/chat/completions"})
logger = logging.getLogger("loomlm.server")


def build_app(engine: Any, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    state = ServerState(engine, config, metrics=ServerMetrics(engine, config.log_requests))
    app = FastAPI(title="loomlm", version="0.1.0")
    app.state.loomlm = state
    install_error_handlers(app)
    routers = [native_router(state), openai_router(state)]
    for router in routers:
        app.include_router(router)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(await state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    routes = frozenset({"/metrics", *(route.path for router in routers for route in router.routes)})
    capacity = None
    if config.max_queued_requests >= 0:
        capacity = engine.config.max_running_requests + config.max_queued_requests
    app.add_middleware(_Guard, state=state, capacity=capacity, routes=routes)
    return app


class _BodyTooLarge(Exception):
    pass


class _Guard:
    """Authentication and the body-size cap, as pure ASGI (no buffering of streamed responses)."""

    def __init__(self, app: ASGIApp, state: ServerState, capacity: int | None, routes: frozenset[str]):
        self.app = app
        self.routes = routes  # label values of the HTTP counter (any other path counts as "unmatched")
        self.state = state
        self.config = state.config
        self.capacity = capacity  # generation requests in flight at most (None: no limit)
        self.key = None if self.config.api_key is None else f"Bearer {self.config.api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, started = [0], time.perf_counter()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, sending)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "unmatched"
            self.state.metrics.http.labels(route=route, status=str(status[0])).inc()
            # answered generation requests log their own line per engine request (metrics.request_done)
            if self.config.log_requests and (scope["path"] not in _GENERATION_PATHS or status[0] != 200):
                elapsed = (time.perf_counter() - started) * 1e3
                logger.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0], elapsed)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if self.key is not None and raw_path not in _OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                await error_response(401, "invalid or missing API key (Authorization: Bearer ...)")(
                    scope, receive, send
                )
                return
        limit = self.config.max_request_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await error_response(413, f"the request body is larger than {limit} bytes")(scope, receive, send)
            return
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        generation = scope["path"] in _GENERATION_PATHS
        state = self.state
        if generation and (state.draining or (self.capacity is not None and state.in_flight >= self.capacity)):
            why = "the server is shutting down" if state.draining else "the server is at capacity; retry later"
            await error_response(503, why, headers={"Retry-After": "1"})(scope, receive, send)
            return
        state.in_flight += generation
        try:
            await self.app(scope, capped, send)
        except _BodyTooLarge:
            await error_response(413, f"the request body is larger than {limit} bytes")(scope, receive, send)
        finally:
            state.in_flight -= generation
