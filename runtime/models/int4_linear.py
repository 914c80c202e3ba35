"""Int4 weight-only linear layers for the CPU (`quantization="int4"`): W4A16, activations in bfloat16.

Each weight [out, in] is cut into groups of 32 input columns; a group keeps 4-bit codes q in 0..15 with
one bfloat16 scale and zero point, w = (q - 8) * scale + zero (asymmetric, like GGUF's Q4_1, whose
blocks are also 32 values: w = d * q + m, so zero = m + 8 d and a Q4_1 checkpoint such as the default
model's keeps its own codes, up to bfloat16 rounding of d and m). Decoding is memory-bound: 4 bits per
weight are an eighth of float32's bytes. Up to `KERNEL_MAX_ROWS` rows go through PyTorch's int4 CPU kernel
(`torch._weight_int4pack_mm_for_cpu`, over its own packed layout); on a 2-core AMD EPYC, for 576 -> 1536,
it takes 18 us at one row (bfloat16 `F.linear`: 52 us), 167 us at 32 and 2.6 ms at 512, while
dequantizing the weight alone takes 1.3 ms. Only longer prefill chunks (2,048 rows: 10.8 ms against 6.4
ms) dequantize a second copy of the codes, two per byte, into a temporary bfloat16 matrix for
`F.linear`. Resident bytes: 4 + 4 bits per weight plus the group scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUP = 32  # input columns per scale / zero point (GGUF's Q4_0 / Q4_1 block size)
KERNEL_MAX_ROWS = 1024  # above this many rows dequantize-then-matmul is faster (see the docstring)


def int4_available() -> bool:
    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")


def quantize_groups(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[out, in] float -> (the kernel's packed codes, scales_and_zeros [in / GROUP, out, 2] in `dtype`,
    codes two per byte [out, in / 2] uint8: even column in the low nibble). `in` must divide by GROUP."""
    out_f, in_f = weight.shape
    if in_f % GROUP:
        raise ValueError(f"int4 weights need input features divisible by {GROUP}, got {in_f}")
    w = weight.detach().float().view(out_f, in_f // GROUP, GROUP)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    # Codes are computed against the stored (rounded) scale and zero, so the kernel reproduces them.
    scale = ((hi - lo) / 15).clamp(min=1e-12).to(dtype).float()  # [out, groups]
    zero = (lo + 8 * scale).to(dtype).float()
    codes = torch.round((w - (zero - 8 * scale)[..., None]) / scale[..., None]).clamp_(0, 15)
    codes = codes.to(torch.int32).view(out_f, in_f)
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()
    nibbles = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).contiguous()
    return packed, scales_zeros, nibbles


def pack_groups(
    codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A checkpoint's groups (codes [out, in] in 0..15, w = d * q + m per group of GROUP) in the layout
    `quantize_groups` returns: the codes are kept as they are; scale = d, zero = m + 8 d (in `dtype`)."""
    out_f, in_f = codes.shape
    if in_f % GROUP or tuple(d.shape) != (out_f, in_f // GROUP) or tuple(m.shape) != tuple(d.shape):
        raise ValueError(f"int4 groups: codes {tuple(codes.shape)} with scales {tuple(d.shape)}")
    codes = codes.to(torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    scale, zero = d.float(), m.float() + 8 * d.float()
    scales_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()
    nibbles = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).contiguous()
    return packed, scales_zeros, nibbles


def dequantize(nibbles: torch.Tensor, scales_zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight [out, in] in `dtype` from its codes and group scales (float32 arithmetic)."""
    out_f = nibbles.shape[0]
    codes = torch.stack([nibbles & 15, nibbles >> 4], dim=-1).view(out_f, -1, GROUP).float()
    scale = scales_zeros[..., 0].t().float()[..., None]  # [out, groups, 1]
    zero = scales_zeros[..., 1].t().float()[..., None]
    return ((codes - 8) * scale + zero).view(out_f, -1).to(dtype)


class Int4Linear(nn.Module):
    """Stands in for an `nn.Linear` (same in/out features, bias kept in the activation dtype)."""

    def __init__(
        self,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        groups: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ):
        """From a float `weight` [out, in] (quantized here), or from `groups` = (codes [out, in] in 0..15,
        d, m [out, in / GROUP]), a checkpoint's own 4-bit groups with w = d * q + m."""
        super().__init__()
        packed, scales_zeros, nibbles = (
            quantize_groups(weight, dtype) if groups is None else pack_groups(*groups, dtype)
        )
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros)
        self.register_buffer("nibbles", nibbles)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.out_features, self.in_features = nibbles.shape[0], nibbles.shape[1] * 2
        # The kernel's operands as a plain attribute too: reading registered buffers goes through
        # nn.Module.__getattr__ (~1 us), and a batch-1 decode step makes 120 of these calls. The layer is
        # CPU-only and never moved, so the two stay the same tensors.
        self.kernel_operands = (packed, scales_zeros)

    @classmethod
    def of(cls, linear: nn.Linear, dtype: torch.dtype) -> Int4Linear:
        return cls(linear.weight, linear.bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # the model passes [tokens, in]
        if rows.shape[0] <= KERNEL_MAX_ROWS:
            packed, scales_zeros = self.kernel_operands
            out = torch._weight_int4pack_mm_for_cpu(rows.contiguous(), packed, GROUP, scales_zeros)
        else:
            out = F.linear(rows, dequantize(self.nibbles, self.scales_zeros, x.dtype))
        if x.dim() != 2:
            out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias
