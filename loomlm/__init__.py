"""loomlm: a runtime for structured LLM programs.

The public API is imported lazily so that `import loomlm` stays cheap until an engine is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "loomlm.runtime.engine",
    "EngineConfig": "loomlm.runtime.config",
    "SamplingParams": "loomlm.runtime.sampling_params",
    "default_model_path": "loomlm.runtime.models.loader",
    **{
        name: "loomlm.lang"
        for name in (
            "function",
            "gen",
            "gen_int",
            "gen_string",
            "select",
            "system",
            "user",
            "assistant",
            "system_begin",
            "system_end",
            "user_begin",
            "user_end",
            "assistant_begin",
            "assistant_end",
            "set_default_backend",
            "get_default_backend",
            "Runtime",
            "LocalBackend",
            "RuntimeEndpoint",
            "OpenAI",
            "SglFunction",
            "ProgramState",
            "ProgramStateGroup",
            "token_length_normalized",
            "greedy_token_selection",
            "unconditional_likelihood_normalized",
            "flush_cache",
            "get_server_info",
            "image",
            "video",
            "Anthropic",
            "LiteLLM",
            "VertexAI",
        )
    },
}

# Binds the settings object over its module's name, as SGLang does (`sgl.global_config.verbosity = 2`); a
# leaf module, so this import is free.
from loomlm.global_config import global_config  # noqa: E402
from loomlm.unshadow import import_shadowed_distributions  # noqa: E402

# Before any dependency imports Hugging Face's `kernels` by its bare name (see loomlm/unshadow.py).
import_shadowed_distributions()

__all__ = ["__version__", "global_config", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loomlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
