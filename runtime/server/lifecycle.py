"""Graceful shutdown: the first SIGTERM (or Ctrl-C) drains, a second one exits at once.

While draining, the server still listens: new generation requests get 503 (`Retry-After`), `/health`
answers 503 (so a router stops sending), the requests in flight finish, and once none is left the
server exits (then `launch` shuts the engine down, and the process exits 0).
"""

from __future__ import annotations

from types import FrameType

import uvicorn

from loomlm.runtime.server.state import ServerState


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.loomlm = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loomlm.draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.loomlm.draining = True

    async def on_tick(self, counter: int) -> bool:
        if self.loomlm.draining and self.loomlm.in_flight == 0:
            self.should_exit = True
        return await super().on_tick(counter)
