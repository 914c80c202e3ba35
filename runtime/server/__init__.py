"""loomlm's HTTP server: SGLang's native API and the OpenAI API over one `Engine` (FastAPI + uvicorn).

`build_app(engine, config)` is the ASGI app (`app.py`); `launch.main` is `loomlm serve` and
`python -m loomlm.runtime.server`. Exported lazily, so the CLI reads the server's flags without
importing FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerConfig", "build_app"]


def __getattr__(name: str) -> Any:
    if name == "build_app":
        from loomlm.runtime.server.app import build_app

        return build_app
    if name == "ServerConfig":
        from loomlm.runtime.server.config import ServerConfig

        return ServerConfig
    raise AttributeError(name)
