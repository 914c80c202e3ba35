"""What every route of the server reads: the engine, the server's config and the names it shows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from loomlm.runtime.server.config import ServerConfig


@dataclass
class ServerState:
    engine: Any  # loomlm.runtime.engine.Engine (typed loosely: importing it here would load torch early)
    config: ServerConfig
    started: float = field(default_factory=time.time)
    draining: bool = False  # set on shutdown: new generation requests get 503
    in_flight: int = 0  # generation requests being answered (event loop only; app._Guard counts them)
    metrics: Any = None  # metrics.ServerMetrics, made by build_app

    @property
    def model_path(self) -> str:
        return str(self.engine.runner.model_path)

    @property
    def model_name(self) -> str:
        return self.config.served_model_name or Path(self.model_path).name

    async def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of `texts`, on a worker thread (the event loop never tokenises)."""
        tokenizer = self.engine.tokenizer
        return await run_in_threadpool(lambda: [list(tokenizer(t)["input_ids"]) for t in texts])

    async def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The chat template applied to `messages` (with the generation prompt), on a worker thread."""
        return await run_in_threadpool(self.engine.apply_chat_template, messages, True)
