"""loomlm.runtime: the inference engine (scheduler, KV memory, model runner, sampler, server).

The public names are `Engine`, `EngineConfig` and `SamplingParams`; they are imported on first use, so
importing a submodule (or `loomlm.runtime` itself) does not load the engine and torch until needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "loomlm.runtime.engine",
    "EngineConfig": "loomlm.runtime.config",
    "SamplingParams": "loomlm.runtime.sampling_params",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loomlm.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
