"""Graceful shutdown: the first SIGTERM (or Ctrl-C) drains, a second one exits at once.

While draining, the server still listens: new generation requests get 503 (`Retry-After`), `/health`
answers 503 (so a router stops sending), the requests in flight finish, and once none is left the
server exits (then `launch` shuts the engine down, and the process exits 0).

Once bound it logs the address it listens on (`--port 0` picks a free port: the log says which).
"""

from __future__ import annotations

import logging
import socket
from types import FrameType

import uvicorn

from loomlm.runtime.server.state import ServerState

logger = logging.getLogger("loomlm.server")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.loomlm = state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []) if self.started else []:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                logger.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loomlm.draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.loomlm.draining = True

    async def on_tick(self, counter: int) -> bool:
        if self.loomlm.draining and self.loomlm.in_flight == 0:
            self.should_exit = True
        return await super().on_tick(counter)
