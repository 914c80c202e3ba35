"""`dtype="auto"` on CPU: bfloat16 where this CPU runs it natively and faster, else float32.

The rule: bfloat16 needs native bf16 dot products (`avx512_bf16` or `amx_bf16` among the CPU flags);
without them bf16 matrix products are emulated and lose to float32. With them, one measurement per
process decides: the model's two MLP weight shapes, in enough copies that the weights stream from
memory as they do in a forward (one pair fits in cache and would flatter float32), at decode batches 1
and 32, each dtype by its faster path (torch's `F.linear` or oneDNN over packed weights, as
`cpu_linear.py` chooses). bfloat16 is kept when it takes under 0.9 of float32's time. On a 2-core AMD EPYC
with avx512_bf16 a bfloat16 engine decodes 1.5x faster at batch 1 and 32 (`docs/benchmarks.md`), while
a 2-core Intel Xeon of the same kind once measured bf16 `F.linear` slower than float32's: hence a
measurement, not a flag check alone. The engine log says which it chose and why.

`LOOMLM_CPU_DTYPE` (float32 or bfloat16) fixes the choice for a process without measuring: the test
suite pins float32, so its numbers do not depend on the machine it runs on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from loomlm.runtime.models.cpu_linear import onednn_available, onednn_linear

ENV_OVERRIDE = "LOOMLM_CPU_DTYPE"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MARGIN = 0.9  # bfloat16 is chosen when it takes under this share of float32's time
TIMED_BATCHES = (1, 32)
STREAM_BYTES = 64 << 20  # float32 bytes of weight copies cycled through per timing (beyond the caches)
REPEATS = 3

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_choices: dict[tuple[int, int], tuple[torch.dtype, str]] = {}
_lock = threading.Lock()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def time_dtype(dtype: torch.dtype, hidden: int, intermediate: int) -> float:
    """Seconds for one pass over STREAM_BYTES of [intermediate, hidden] and [hidden, intermediate]
    weights in `dtype` at each of TIMED_BATCHES, by the faster of F.linear and oneDNN (best of REPEATS)."""
    pair = 2 * hidden * intermediate * 4
    copies = max(1, STREAM_BYTES // pair)
    gen = torch.Generator().manual_seed(0)
    weights = [
        (torch.randn(shape, generator=gen) * 0.02).to(dtype)
        for _ in range(copies)
        for shape in ((intermediate, hidden), (hidden, intermediate))
    ]
    runs: list[Callable[[torch.Tensor], torch.Tensor]] = [lambda x, w=w: F.linear(x, w) for w in weights]
    paths = [runs]
    if onednn_available():
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
        paths.append([lambda x, p=p: onednn_linear(x, p, None) for p in packed])
    total = 0.0
    with torch.inference_mode():
        for batch in TIMED_BATCHES:
            xs = {n: torch.randn(batch, n, generator=gen).to(dtype) for n in (hidden, intermediate)}
            inputs = [xs[w.shape[1]] for w in weights]
            best = float("inf")
            for path in paths:
                for _ in range(REPEATS):
                    start = time.perf_counter()
                    for run, x in zip(path, inputs):
                        run(x)
                    best = min(best, time.perf_counter() - start)
            total += best
    return total


def choose_cpu_dtype(
    hidden: int,
    intermediate: int,
    flags: set[str] | None = None,
    measure: Callable[[torch.dtype, int, int], float] = time_dtype,
) -> tuple[torch.dtype, str]:
    """(dtype, a line saying why) for a CPU engine of a model with these MLP sizes; once per process."""
    forced = os.environ.get(ENV_OVERRIDE)
    if forced:
        if forced not in _DTYPES:
            raise ValueError(f"{ENV_OVERRIDE} must be one of {sorted(_DTYPES)}, got {forced!r}")
        return _DTYPES[forced], f"{ENV_OVERRIDE}={forced}"
    flags = cpu_flags() if flags is None else flags
    native = sorted(set(NATIVE_BF16_FLAGS) & flags)
    if not native:
        return torch.float32, f"this CPU has no native bfloat16 ({' / '.join(NATIVE_BF16_FLAGS)})"
    key = (hidden, intermediate)
    with _lock:
        if key in _choices:
            return _choices[key]
    fp32_s = measure(torch.float32, hidden, intermediate)
    bf16_s = measure(torch.bfloat16, hidden, intermediate)
    dtype = torch.bfloat16 if bf16_s < MARGIN * fp32_s else torch.float32
    why = (
        f"{'+'.join(native)}; {hidden}x{intermediate} MLP weights from memory at batch {TIMED_BATCHES}: "
        f"bfloat16 {bf16_s * 1e3:.2f} ms vs float32 {fp32_s * 1e3:.2f} ms"
    )
    with _lock:
        return _choices.setdefault(key, (dtype, why))
