"""The messages other threads send to the engine loop (`EngineCore`'s thread-safe inbox)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loomlm.runtime.request import Req


@dataclass(frozen=True)
class AddRequests:
    """Queue requests; those of one message are all queued before the next step is scheduled."""

    reqs: tuple[Req, ...]


@dataclass(frozen=True)
class AbortRequest:
    rid: str


@dataclass(frozen=True)
class CallOnLoop:
    """Run `fn` on the loop thread between steps; its result or exception goes to `future`."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future


@dataclass(frozen=True)
class StopLoop:
    pass


Message = AddRequests | AbortRequest | CallOnLoop | StopLoop
