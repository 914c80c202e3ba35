"""Non-streamed generation that stops when its client goes away.

A streamed response notices a closed connection by itself (Starlette listens for `http.disconnect`
while it streams and closes the stream, which aborts the engine requests). A non-streamed one sends
nothing until the answer is complete, so without a watcher a client that timed out would leave its
requests decoding for nobody. `unless_disconnected` awaits the work and, beside it, the connection's
next ASGI message: the body has been read by then, so that message is `http.disconnect`, and the
work is cancelled (the engine's awaitable aborts its unfinished requests and frees their KV).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request

from loomlm.runtime.server.errors import ApiError

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": counted in the HTTP metrics, seen by nobody


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`; ApiError(499) once the client has disconnected (`work` is cancelled)."""
    task: asyncio.Future[Any] = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler is itself cancelled: neither may outlive it
        for pending in (watcher, task):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
    if task.cancelled():
        raise ApiError(CLIENT_CLOSED, "the client closed the connection before the answer was ready")
    return task.result()
