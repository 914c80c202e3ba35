"""How the model's linear layers run on CPU: torch's `F.linear`, or oneDNN over weights packed once.

On CPU, torch sends a float32 `F.linear` to MKL, whose small-batch GEMMs are slow on some CPUs of
this project's kind (a 2-core AMD EPYC: 576 -> 3072 at batch 4 takes 300 us, 3x batch 1, and the
tied 49,152-row LM head 6.9 ms per token); oneDNN over a weight reordered once into its blocked layout
(what vLLM's and SGLang's CPU backends and torch.compile's weight freezing do) takes 63 us and 2.7 ms
there, and is faster in bf16 too. Which path wins depends on the CPU and the dtype, so `auto` times
both once per process on the model's own shapes, at batch 1 and 8, and keeps oneDNN only when it is
clearly faster; the engine log says what it chose and why.

`PackedLinear` keeps the original weight as its `weight` parameter (state-dict names and weight
sharing between engines are unchanged) beside the packed copy; packed copies are shared by every
engine over the same weight tensor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

_MARGIN = 0.9  # oneDNN is chosen when it takes under this share of torch's time
_TIMED_BATCHES = (1, 8)  # decode batch sizes the choice is timed at
_REPEATS = 5

_packed: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight tensor -> its oneDNN-packed copy
_choices: dict[tuple, tuple[str, str]] = {}  # (dtype, shapes) -> (backend, reason), once per process
_lock = threading.Lock()


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """The oneDNN layout of `weight` [out, in] (made once per tensor, shared)."""
    with _lock:
        packed = _packed.get(weight)
        if packed is None:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
            _packed[weight] = packed
        return packed


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [T, in] @ weight.T (+ bias) -> [T, out], with `packed` from `packed_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """An `nn.Linear` run by oneDNN over its packed weight (inputs are 2-D: [tokens, in])."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.packed = packed_weight(self.weight)

    @classmethod
    def of(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.packed, self.bias)


def time_linear(kind: str, weight: torch.Tensor, batch: int) -> float:
    """Seconds of one linear over `weight` at `batch` rows by `kind` ("torch" or "onednn"), after a
    warm-up call (first-call set-up is not what decode steps pay)."""
    x = torch.randn(batch, weight.shape[1], dtype=weight.dtype)
    if kind == "torch":
        run = lambda: F.linear(x, weight)
    else:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)  # not cached: may go unused
        run = lambda: onednn_linear(x, packed, None)
    with torch.inference_mode():
        run()
        start = time.perf_counter()
        for _ in range(_REPEATS):
            run()
        return (time.perf_counter() - start) / _REPEATS


def choose_cpu_linear(
    weights: Iterable[torch.Tensor], measure: Callable[[str, torch.Tensor, int], float] = time_linear
) -> tuple[str, str]:
    """("onednn" or "torch", a line saying why) for linear layers over `weights` ([out, in] each; one
    per distinct shape is measured, at batch 1 and 8). Decided once per process per dtype and shapes,
    so every engine of a process takes the same path."""
    weights = list({tuple(w.shape): w for w in weights}.values())
    if not onednn_available():
        return "torch", "oneDNN is not available in this torch build"
    key = (weights[0].dtype, tuple(tuple(w.shape) for w in weights))
    with _lock:
        if key in _choices:
            return _choices[key]
    torch_s = sum(measure("torch", w, batch) for w in weights for batch in _TIMED_BATCHES)
    try:
        onednn_s = sum(measure("onednn", w, batch) for w in weights for batch in _TIMED_BATCHES)
    except RuntimeError as exc:  # a dtype this CPU's oneDNN build cannot pack (float16 on some CPUs)
        backend, reason = "torch", f"oneDNN failed on these weights: {exc}"
    else:
        backend = "onednn" if onednn_s < _MARGIN * torch_s else "torch"
        reason = (
            f"oneDNN packed {onednn_s * 1e3:.2f} ms vs torch F.linear {torch_s * 1e3:.2f} ms over "
            f"{len(weights)} {str(key[0]).removeprefix('torch.')} weight shapes at batch {_TIMED_BATCHES}"
        )
    with _lock:
        return _choices.setdefault(key, (backend, reason))
