"""The element-wise ops of the Llama forward, as interchangeable sets: plain torch, C++ on CPU, Triton.

The model calls `ops.rms_norm`, `ops.silu_and_mul` and `ops.rope` and never knows which set it runs:
`TorchOps` (eager torch, the fallback), `CpuOps` (loomlm's C++ CPU kernels, `kernels/cpu_kernels.py`,
chosen with the cpu attention backend) or `TritonOps` (the fused kernels of `loomlm.kernels`, chosen with
the triton attention backend). All compute the same arithmetic (`kernels/reference.py` states it), so
their outputs agree to rounding.

RoPE needs per-forward inputs (the positions' rows of the cos/sin tables); `rope_inputs` prepares them
once per forward and every layer's `rope` call reuses them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class TorchOps:
    """Eager torch: rotate-half RoPE with the tables cast to the model dtype (as Hugging Face does)."""

    name = "torch"

    @staticmethod
    def rms_norm(
        x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight * normalise(x [+ residual]), x [+ residual]): the sum is the next residual."""
        if residual is not None:
            x = x + residual
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
        return weight * normed, x

    @staticmethod
    def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
        """x [T, 2I] = [gate | up] -> silu(gate) * up [T, I]."""
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def rope_inputs(positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> Any:
        """cos/sin rows [T, 1, D/2] in the model dtype, broadcast over heads."""
        return cos[positions, None].to(dtype), sin[positions, None].to(dtype)

    @staticmethod
    def rope(qk: torch.Tensor, inputs: Any) -> torch.Tensor:
        """qk [T, heads, D] -> rotated copy [T, heads, D]."""
        cos, sin = inputs
        x1, x2 = qk.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def tables_for_kernel(positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> Any:
    """RoPE inputs of the fused kernels (Triton and C++), which gather table rows themselves: positions [T]
    int64 and the float32 tables [P, D/2]."""
    return positions, cos, sin


class TritonOps:
    """The fused Triton kernels: RMSNorm with the residual add, SiLU-and-mul, RoPE in place on the
    strided q/k view of the fused qkv projection (no copy)."""

    name = "triton"

    def __init__(self) -> None:
        from loomlm.kernels import fused_ops, rope_kv  # imports triton: only when this set is chosen

        self._fused = fused_ops
        self._rope = rope_kv

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, summed = self._fused.rms_norm(x, weight, eps, residual)
        return out, (x if summed is None else summed)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        return self._fused.silu_and_mul(x)

    rope_inputs = staticmethod(tables_for_kernel)

    def rope(self, qk: torch.Tensor, inputs: Any) -> torch.Tensor:
        positions, cos, sin = inputs
        return self._rope.apply_rope_(qk, positions, cos, sin)


class CpuOps:
    """loomlm's C++ CPU kernels: one call per op where eager torch makes 5-10 (casts, chunks, cats);
    RoPE in place on the strided q/k view of the fused qkv projection, as TritonOps does."""

    name = "cpu"

    def __init__(self) -> None:
        from loomlm.kernels import cpu_kernels  # builds the extension on first use (cached per machine)

        self.kernels = cpu_kernels.load()

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, summed = self.kernels.rms_norm(x.contiguous(), weight, residual, eps)
        return out, summed  # a tuple, as the model unpacks the other op sets' results

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.silu_and_mul(x.contiguous())

    rope_inputs = staticmethod(tables_for_kernel)

    def rope(self, qk: torch.Tensor, inputs: Any) -> torch.Tensor:
        positions, cos, sin = inputs
        return self.kernels.rope_(qk, positions, cos, sin)


Ops = TorchOps | CpuOps | TritonOps


def create_ops(name: str) -> Ops:
    """The op set that goes with attention backend `name`."""
    if name == "triton":
        return TritonOps()
    if name == "cpu":
        return CpuOps()
    if name == "torch":
        return TorchOps()
    raise ValueError(f"unknown op set {name!r}; available: 'torch', 'cpu', 'triton'")
