"""The process-wide default backend (`set_default_backend`) and turning engines into backends."""

from __future__ import annotations

from typing import Any

from loomlm.lang.backends.base import Backend

_default: Backend | None = None


def as_backend(backend: Any) -> Backend:
    """A `Backend` as is; an in-process `loomlm.Engine` wrapped in a `LocalBackend`."""
    if isinstance(backend, Backend):
        return backend
    if hasattr(backend, "core") and hasattr(backend, "tokenizer") and hasattr(backend, "generate"):
        from loomlm.lang.backends.local import LocalBackend

        return LocalBackend(backend)
    raise TypeError(
        f"a backend must be loomlm.Runtime, RuntimeEndpoint, OpenAI or an Engine, got {type(backend).__name__}"
    )


def set_default_backend(backend: Any) -> None:
    global _default
    _default = None if backend is None else as_backend(backend)


def get_default_backend() -> Backend | None:
    return _default


def resolve_backend(backend: Any = None) -> Backend:
    if backend is not None:
        return as_backend(backend)
    if _default is None:
        raise RuntimeError("no backend: call loomlm.set_default_backend(loomlm.Runtime()) or pass backend=")
    return _default
