"""What every route of the server reads: the engine, the server's config and the names it shows."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2.exceptions import SecurityError, TemplateError
from starlette.concurrency import run_in_threadpool

from loomlm.runtime.server.config import ServerConfig
from loomlm.runtime.server.errors import ApiError
from loomlm.runtime.server.tool_call_formats import ToolCallFormat, tool_call_format


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

    def check_fanout(self, prompts: int, n: Any, param: str) -> None:
        """400 unless prompts x n engine requests fit `max_batch_requests` (a non-int `n` is left to the
        engine's own check)."""
        limit = self.config.max_batch_requests
        if isinstance(n, int) and not isinstance(n, bool) and prompts * n > limit:
            raise ApiError(
                400,
                f"this request asks for {prompts * n} generations (prompts x n); a request may ask for at most "
                f"{limit} (--max-batch-requests)",
                param,
            )

    async def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of `texts`, on a worker thread (the event loop never tokenises)."""
        tokenizer = self.engine.tokenizer
        return await run_in_threadpool(lambda: [list(tokenizer(t)["input_ids"]) for t in texts])

    @property
    def tool_format(self) -> ToolCallFormat:
        return tool_call_format(self.config.tool_call_parser)

    @property
    def template_renders_tools(self) -> bool:
        """Whether the tokenizer's chat template reads `tools` (then it, not loomlm, presents them)."""
        template = getattr(self.engine.tokenizer, "chat_template", None)
        return isinstance(template, str) and re.search(r"\btools\b", template) is not None

    async def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> str:
        """The chat template applied to `messages` (with the generation prompt), on a worker thread.
        The template runs in jinja's sandbox: one that tries to leave it is refused (500, nothing is
        run); one that raises over the conversation (`raise_exception`) is the caller's 400."""
        try:
            return await run_in_threadpool(self.engine.apply_chat_template, messages, True, tools)
        except SecurityError as exc:
            raise ApiError(
                500, f"the model's chat template tried to leave jinja's sandbox and was refused: {exc}", None
            ) from None
        except TemplateError as exc:
            raise ApiError(400, f"the chat template refused the conversation: {exc}", "messages") from None
