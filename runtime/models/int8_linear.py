"""Int8 weight-only linear layers for the CPU (`quantization="int8"`): W8A16, activations in bfloat16.

Each weight [out, in] is stored as int8 with one bfloat16 scale per output row (symmetric, the row's
largest magnitude maps to 127): a quarter of float32's bytes, half of bfloat16's. Decoding one token at a
time is memory-bound, so bytes per token are what batch-1 speed buys. Small batches (at most
`KERNEL_MAX_ROWS` rows) go through PyTorch's int8 weight-only CPU kernel (`torch._weight_int8pack_mm`,
AVX-512 where present), which reads the int8 weights directly but does not reuse them across rows: on a
2-core AMD EPYC it takes 35 us for a 576 -> 3072 projection at one row (bfloat16 `F.linear`: 84 us) and
383 us at 32 rows (175 us). Larger batches (prefill, big decode batches) dequantize the weight into a
temporary bfloat16 matrix and run `F.linear`, which is compute-bound there anyway. Nothing keeps a
second, unquantized copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL_MAX_ROWS = 4  # above this many rows the dequantize-then-matmul path is faster (see the docstring)


def quantize_rows(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], scales [out] in `dtype`), symmetric per output row."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(dtype)  # rounded first: q uses the stored scale
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [..., in] (the scales' dtype) @ (qweight * scales).T -> [..., out]."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] <= KERNEL_MAX_ROWS:
        out = torch._weight_int8pack_mm(rows.contiguous(), qweight, scales)
    else:
        out = F.linear(rows, qweight.to(x.dtype) * scales[:, None])
    return out.view(*x.shape[:-1], qweight.shape[0])


class Int8Linear(nn.Module):
    """Stands in for an `nn.Linear` (same in/out features, bias kept in the activation dtype)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(scales.dtype), requires_grad=False)
        self.out_features, self.in_features = qweight.shape

    @classmethod
    def of(cls, linear: nn.Linear, dtype: torch.dtype) -> Int8Linear:
        qweight, scales = quantize_rows(linear.weight, dtype)
        return cls(qweight, scales, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = int8_linear(x, self.qweight, self.scales)
        return out if self.bias is None else out + self.bias


def int8_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")
