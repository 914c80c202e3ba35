"""`loomlm.global_config`: the process-wide settings SGLang programs set on `sglang.global_config`.

    import loomlm as sgl
    sgl.global_config.verbosity = 2                 # print each program's text when its run ends

    from loomlm.global_config import global_config  # the same object, as in SGLang

A leaf module (it imports nothing from loomlm at module level), so `loomlm/__init__` binds the object over
the module's name at no import cost, as SGLang does. The frontend (`loomlm.lang`) is the layer that reads
it.

Fields that take effect here:

- `default_backend`: the same setting as `set_default_backend` / `get_default_backend` (assigning an
  `Engine` wraps it, as `set_default_backend` does).
- `verbosity`: 0 prints nothing; >= 2 prints a program's final text after each `run` (SGLang's rule).
- `enable_precache_with_tracing`: `run_batch` prefills the program's traced constant prefix once before
  dispatching (True, the default); False skips that.
- `skip_special_tokens_in_output`: False keeps special tokens in generated text (sent to the engine as
  the `skip_special_tokens` sampling parameter; a chat-API backend has no such parameter and says so).

Accepted and unused (a program may set them; they change nothing): `enable_parallel_encoding` (a
`concate_and_append` join appends the branches' text; there is no KV concatenation to switch),
`spaces_between_special_tokens_in_out`, and the runtime constants `default_init_new_token_ratio`,
`default_min_new_token_ratio_factor`, `default_new_token_ratio_decay_steps`, `retract_decode_steps`,
`flashinfer_workspace_size`, `enable_gds`, `gds_path` (loomlm's engine takes its settings per engine,
from `EngineConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GlobalConfig:
    verbosity: int = 0
    enable_precache_with_tracing: bool = True
    skip_special_tokens_in_output: bool = True
    # Accepted for SGLang programs, unused here (see the module docstring).
    enable_parallel_encoding: bool = True
    spaces_between_special_tokens_in_out: bool = True
    default_init_new_token_ratio: float = 0.7
    default_min_new_token_ratio_factor: float = 0.14
    default_new_token_ratio_decay_steps: float = 600
    retract_decode_steps: int = 20
    flashinfer_workspace_size: int = 384 * 1024 * 1024
    enable_gds: bool = False
    gds_path: str = "/tmp/gds/"

    # The default backend lives in loomlm.lang.backends.default; imported on use so that importing this
    # module (and `import loomlm`) stays cheap.
    @property
    def default_backend(self) -> Any:
        from loomlm.lang.backends.default import get_default_backend

        return get_default_backend()

    @default_backend.setter
    def default_backend(self, backend: Any) -> None:
        from loomlm.lang.backends.default import set_default_backend

        set_default_backend(backend)


global_config = GlobalConfig()
