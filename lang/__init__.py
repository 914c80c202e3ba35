"""loomlm.lang: the frontend language (`@function` programs made of gen, select, fork and roles).

Everything here is re-exported by `loomlm`, so `import loomlm as sgl` runs SGLang-style programs.
Importing it does not import torch: the engine is loaded by `Runtime` (in-process backend) only.
"""

from loomlm.global_config import global_config
from loomlm.lang.api import (
    Anthropic,
    LiteLLM,
    VertexAI,
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    image,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from loomlm.lang.backends.default import get_default_backend, set_default_backend
from loomlm.lang.backends.http import RuntimeEndpoint
from loomlm.lang.backends.local import LocalBackend, Runtime
from loomlm.lang.backends.openai import OpenAI
from loomlm.lang.choices import greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized
from loomlm.lang.function import SglFunction, function
from loomlm.lang.state import ProgramState, ProgramStateGroup

__all__ = [
    "assistant",
    "assistant_begin",
    "assistant_end",
    "gen",
    "gen_int",
    "gen_string",
    "select",
    "system",
    "system_begin",
    "system_end",
    "user",
    "user_begin",
    "user_end",
    "get_default_backend",
    "set_default_backend",
    "LocalBackend",
    "Runtime",
    "RuntimeEndpoint",
    "OpenAI",
    "greedy_token_selection",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "SglFunction",
    "function",
    "ProgramState",
    "ProgramStateGroup",
    "flush_cache",
    "get_server_info",
    "image",
    "video",
    "Anthropic",
    "LiteLLM",
    "VertexAI",
    "global_config",
]
