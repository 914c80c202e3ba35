"""ServerConfig: the HTTP server's own frozen arguments (the engine's are `EngineConfig`'s)."""

from __future__ import annotations

from dataclasses import dataclass

from loomlm.runtime.server.tool_call_formats import TOOL_CALL_PARSERS

HELP = {
    "host": "address to listen on (loopback by default; 0.0.0.0 exposes the server)",
    "port": "TCP port",
    "api_key": "require 'Authorization: Bearer KEY' on every route but /health",
    "served_model_name": "model id shown by /v1/models and in responses (default: the model file's name)",
    "max_request_bytes": "largest request body accepted (413 beyond it)",
    "max_queued_requests": "generation requests waiting beyond the running ones before 503s (-1: no limit)",
    "log_requests": "log one line per generation request (rid, prompt, cached and output tokens, queue time, "
    "latency, finish reason) and per other HTTP request (method, path, status, latency)",
    "max_batch_requests": "engine requests one HTTP request may start (prompts x n); more is a 400",
    "tool_call_parser": "how tool calls look in the model's text: hermes (<tool_call>{...}</tool_call>), "
    "llama3 (bare JSON objects) or mistral ([TOOL_CALLS][...])",
    "incremental_streaming_output": "/generate streams each event's own text and logprobs (SGLang's flag), "
    "not everything so far",
}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    served_model_name: str | None = None
    max_request_bytes: int = 32 * 2**20
    max_queued_requests: int = -1
    log_requests: bool = True
    incremental_streaming_output: bool = False
    tool_call_parser: str = "hermes"
    max_batch_requests: int = 1024

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:  # 0: any free port (tests)
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_request_bytes <= 0:
            raise ValueError(f"max_request_bytes must be positive, got {self.max_request_bytes}")
        if self.max_queued_requests < -1:
            raise ValueError(f"max_queued_requests must be -1 (no limit) or >= 0, got {self.max_queued_requests}")
        if self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise ValueError(
                f"tool_call_parser must be one of {', '.join(TOOL_CALL_PARSERS)}, got {self.tool_call_parser!r}"
            )
        if self.max_batch_requests <= 0:
            raise ValueError(f"max_batch_requests must be positive, got {self.max_batch_requests}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")
