"""Triton kernels for the element-wise parts of a Llama layer: RMSNorm (with a fused residual add),
SiLU-and-mul, and the grammar engine's packed logit bitmask.

Each wrapper checks shapes, dtypes, devices and strides and says what is wrong; the arithmetic is that of
`kernels/reference.py` (float32 inside the kernel). One program per row (or per row x vocabulary block
for the bitmask); rows must be contiguous in their last dimension. Outputs may be passed in (`out=`, and
`residual_out=` for the updated residual, which may be the residual itself) to reuse preallocated buffers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_rows(name: str, t: torch.Tensor, width: int | None = None) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, features], got shape {tuple(t.shape)}")
    if t.dtype not in _FLOATS:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.stride(1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")
    if width is not None and t.shape[1] != width:
        raise ValueError(f"{name} must have {width} features, got {t.shape[1]}")


def _check_out(name: str, t: torch.Tensor, like: torch.Tensor, shape: tuple[int, int]) -> None:
    """A caller-provided output: `shape`, `like`'s dtype and device, rows contiguous in the last dim."""
    if tuple(t.shape) != shape or t.dtype != like.dtype or t.device != like.device:
        raise ValueError(
            f"{name} must be {shape} {like.dtype} on {like.device}, got {tuple(t.shape)} {t.dtype} on {t.device}"
        )
    if t.stride(1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    x_stride,
    res_stride,
    out_stride,
    res_out_stride,
    H,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # The sum is rounded to the input dtype first, as `x + residual` is in the reference.
        x = x + tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0)
        tl.store(res_out_ptr + row * res_out_stride + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
    normed = (xf * rstd).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * out_stride + cols, w * normed, mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as `reference.rms_norm`: (weight * normalised(x [+ residual]), the sum or None).
    `out` and `residual_out` (which needs `residual`) are written entirely when given. `residual_out`
    may be `residual` itself (an in-place update: each program reads its row before writing it), and
    `out` may be `x`, but `out` and `residual_out` must be different memory."""
    _check_rows("x", x)
    hidden = x.shape[1]
    if weight.shape != (hidden,) or weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(
            f"weight must be [{hidden}] {x.dtype} on {x.device}, got {tuple(weight.shape)} "
            f"{weight.dtype} on {weight.device}"
        )
    if residual is not None:
        _check_rows("residual", residual, hidden)
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(
                f"residual must match x ({tuple(x.shape)} {x.dtype}), got {tuple(residual.shape)} {residual.dtype}"
            )
    if out is None:
        out = torch.empty_like(x)
    else:
        _check_out("out", out, x, tuple(x.shape))
    if residual_out is not None:
        if residual is None:
            raise ValueError("residual_out needs a residual to add")
        _check_out("residual_out", residual_out, x, tuple(x.shape))
        if residual_out.numel() and residual_out.data_ptr() == out.data_ptr():
            raise ValueError("out and residual_out must not be the same memory")
    if residual_out is not None:
        res_out = residual_out
    else:  # without a residual, a dummy the kernel never writes
        res_out = torch.empty_like(x) if residual is not None else out
    if x.shape[0]:
        _rms_norm_kernel[(x.shape[0],)](
            x,
            residual if residual is not None else x,
            weight.contiguous(),
            out,
            res_out,
            x.stride(0),
            residual.stride(0) if residual is not None else 0,
            out.stride(0),
            res_out.stride(0),
            hidden,
            float(eps),
            HAS_RESIDUAL=residual is not None,
            BLOCK=triton.next_power_of_2(hidden),
        )
    return out, (res_out if residual is not None else None)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_stride, out_stride, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride + inter + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * out_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, 2I] = [gate | up] -> [T, I]; `out` ([T, I], x's dtype) is written entirely when given."""
    _check_rows("x", x)
    if x.shape[1] % 2:
        raise ValueError(f"x must hold gate and up halves (an even width), got width {x.shape[1]}")
    inter = x.shape[1] // 2
    if out is None:
        out = torch.empty((x.shape[0], inter), dtype=x.dtype, device=x.device)
    else:
        _check_out("out", out, x, (x.shape[0], inter))
    block = min(1024, triton.next_power_of_2(max(inter, 1)))
    if x.shape[0] and inter:
        _silu_and_mul_kernel[(x.shape[0], triton.cdiv(inter, block))](
            x, out, x.stride(0), out.stride(0), inter, BLOCK=block
        )
    return out


@triton.jit
def _bitmask_kernel(logits_ptr, mask_ptr, rows_ptr, logits_stride, mask_stride, vocab, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    tokens = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_vocab = tokens < vocab
    row = tl.load(rows_ptr + i)
    words = tl.load(mask_ptr + i * mask_stride + tokens // 32, mask=in_vocab, other=0)
    allowed = ((words >> (tokens % 32)) & 1) != 0
    tl.store(logits_ptr + row * logits_stride + tokens, float("-inf"), mask=in_vocab & ~allowed)


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """In place, same contract as `reference.apply_token_bitmask_`; touches only disallowed entries."""
    _check_rows("logits", logits)
    vocab = logits.shape[1]
    width = (vocab + 31) // 32
    if bitmask.dim() != 2 or bitmask.dtype != torch.int32 or bitmask.shape[1] != width:
        raise ValueError(
            f"bitmask must be int32 [rows, {width}] for a vocabulary of {vocab}, got "
            f"{bitmask.dtype} {tuple(bitmask.shape)}"
        )
    if bitmask.stride(1) != 1 or bitmask.device != logits.device:
        raise ValueError("bitmask must be contiguous in its last dimension and on the logits' device")
    n = bitmask.shape[0]
    if rows is None:
        if n > logits.shape[0]:
            raise ValueError(f"bitmask has {n} rows but logits only {logits.shape[0]}")
        rows = torch.arange(n, device=logits.device)
    elif rows.shape != (n,) or rows.dtype != torch.int64:
        raise ValueError(f"rows must be int64 [{n}], got {rows.dtype} {tuple(rows.shape)}")
    block = 1024
    if n and vocab:
        _bitmask_kernel[(n, triton.cdiv(vocab, block))](
            logits, bitmask, rows, logits.stride(0), bitmask.stride(0), vocab, BLOCK=block
        )
    return logits
