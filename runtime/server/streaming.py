"""Server-sent events: the framing, and a merge of several engine streams into one.

An engine stream serves one request; a response with `n` choices (or several prompts) runs one stream
per choice, each seeded as the engine seeds the copies of one non-streamed request (so streamed and
non-streamed choices agree), and `merged` interleaves their chunks as they come, tagged with the
choice index. Closing the merged iterator (a client that went away) closes every stream, which aborts
their unfinished requests and frees their KV.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

SEED_STRIDE = 7919  # the engine's seed offset between the copies of one request (engine._make_req)
_END = object()


def sse(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def merged(streams: list[AsyncIterator[dict[str, Any]]]) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(stream index, chunk) from every stream, in arrival order, until all have ended."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[dict[str, Any]]) -> None:
        try:
            async for chunk in stream:
                await queue.put((i, chunk))
            await queue.put((i, _END))
        except Exception as exc:  # handed to the reader, which raises it
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, chunk = await queue.get()
            if isinstance(chunk, Exception):
                raise chunk
            if chunk is _END:
                left -= 1
                continue
            yield i, chunk
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            await stream.aclose()
