"""loomlm's C++ CPU kernels (`kernels/cpu/*.cpp`): built at first use, then loaded from a cache.

The CPU op set (`runtime/models/ops.py`, `CpuOps`) and the `cpu` attention backend call these instead of
chains of small aten ops: RMSNorm with the residual add, SiLU-and-mul, RoPE in place (`elementwise.cpp`),
the KV store with decode attention over the slot pool (`decode_attention.cpp`); and a decode step runs
every decoder layer in one call (`decode_layers.cpp`, driven by `runtime/models/cpu_decode.py`). They
follow `reference.py`'s arithmetic (float32 inside, one rounding at the end), as the Triton kernels do.

The source is compiled with `torch.utils.cpp_extension` (g++ and ninja) for the CPU it runs on
(`-march=native`), into `$LOOMLM_CACHE_DIR/cpu-kernels/<key>` (default `~/.cache/loomlm`). The key hashes
the source, the flags, the torch version and the CPU's feature flags, so a changed source or another CPU
gets its own build; a build takes ~25-40 s on 2 cores, once per machine. Processes that build at the same
time take turns (torch's lock file in the build folder). `load()` raises `CpuKernelsUnavailable` saying why
(no compiler, no ninja, a compile error); callers fall back to the aten ops.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)
SOURCE_DIR = Path(__file__).with_name("cpu")
SOURCES = ("bindings.cpp", "elementwise.cpp", "decode_attention.cpp", "decode_layers.cpp")
HEADERS = ("ops.h", "simd.h", "decode_layers.h")
CFLAGS = ("-O3", "-march=native", "-fopenmp")  # OpenMP: at::parallel_for is a header-only pragma loop

_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


class CpuKernelsUnavailable(RuntimeError):
    """The C++ kernels could not be built or loaded here (the message says why)."""


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key() -> str:
    h = hashlib.sha256()
    code = [(SOURCE_DIR / name).read_bytes() for name in (*SOURCES, *HEADERS)]
    for part in (*code, " ".join(CFLAGS).encode(), torch.__version__.encode(), _cpu_features().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("LOOMLM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "loomlm")
    return Path(root) / "cpu-kernels"


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load as load_extension

    key = build_key()
    folder = cache_dir() / key
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob("*.so")):
        logger.warning("building loomlm's CPU kernels for this machine into %s (once; under a minute)", folder)
    return load_extension(
        name=f"loomlm_cpu_{key}",
        sources=[str(SOURCE_DIR / name) for name in SOURCES],
        extra_cflags=list(CFLAGS),
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        verbose=False,
    )


def _summary(exc: Exception) -> str:
    """The compiler's first error line if there is one, else the exception's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() and "Error building extension" not in line]
    return f"{type(exc).__name__}: {(errors or lines or [repr(exc)])[0][:300]}"


def load() -> ModuleType:
    """The compiled module (built on the first call in a process if the cache has none)."""
    global _module, _failure
    with _lock:
        if _module is not None:
            return _module
        if _failure is not None:
            raise CpuKernelsUnavailable(_failure)
        if os.environ.get("LOOMLM_CPU_KERNELS", "").strip().lower() in ("0", "off", "false", "no"):
            _failure = "disabled by LOOMLM_CPU_KERNELS"
            raise CpuKernelsUnavailable(_failure)
        try:
            _module = _build()
        except Exception as exc:  # compiler missing, ninja missing, compile or link error
            _failure = f"building the CPU kernels failed: {_summary(exc)}"
            raise CpuKernelsUnavailable(_failure) from exc
        return _module


def unavailable_reason() -> str | None:
    """None when the kernels load, else why not."""
    try:
        load()
    except CpuKernelsUnavailable as exc:
        return str(exc)
    return None
