"""Triton kernels that touch q/k/v before attention: RoPE applied in place, and the KV-pool store.

`apply_rope_` rotates q and k (typically one [T, H + KVH, D] view of the fused qkv projection) in place,
one program per (token, head); `store_kv_` scatters a step's new keys and values into their token
slots, one program per token. Arithmetic as in `kernels/reference.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(
    x_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    t_stride,
    h_stride,
    table_stride,
    HALF,
    INTERLEAVED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1)
    i = tl.arange(0, BLOCK)
    mask = i < HALF
    pos = tl.load(pos_ptr + t)
    c = tl.load(cos_ptr + pos * table_stride + i, mask=mask, other=0.0)
    s = tl.load(sin_ptr + pos * table_stride + i, mask=mask, other=0.0)
    base = x_ptr + t * t_stride + h * h_stride
    if INTERLEAVED:
        a_ptr = base + 2 * i
        b_ptr = base + 2 * i + 1
    else:
        a_ptr = base + i
        b_ptr = base + HALF + i
    a = tl.load(a_ptr, mask=mask, other=0.0)
    b = tl.load(b_ptr, mask=mask, other=0.0)
    af = a.to(tl.float32)
    bf = b.to(tl.float32)
    tl.store(a_ptr, (af * c - bf * s).to(a.dtype), mask=mask)
    tl.store(b_ptr, (bf * c + af * s).to(a.dtype), mask=mask)


def apply_rope_(
    x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False
) -> torch.Tensor:
    """In place; same contract as `reference.apply_rope_`."""
    if x.dim() != 3 or x.stride(2) != 1 or x.shape[2] % 2:
        raise ValueError(
            f"x must be [tokens, heads, even head_dim] with a contiguous last dimension, got "
            f"shape {tuple(x.shape)} strides {x.stride()}"
        )
    tokens, heads, dim = x.shape
    half = dim // 2
    if positions.shape != (tokens,) or positions.dtype != torch.int64:
        raise ValueError(f"positions must be int64 [{tokens}], got {positions.dtype} {tuple(positions.shape)}")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dim() != 2 or table.shape[1] != half or table.dtype != torch.float32 or table.stride(1) != 1:
            raise ValueError(
                f"{name} must be a float32 [positions, {half}] table, got {table.dtype} {tuple(table.shape)}"
            )
    if cos.stride(0) != sin.stride(0):
        raise ValueError("cos and sin tables must have the same row stride")
    if tokens and heads:
        _rope_kernel[(tokens, heads)](
            x,
            positions,
            cos,
            sin,
            x.stride(0),
            x.stride(1),
            cos.stride(0),
            half,
            INTERLEAVED=interleaved,
            BLOCK=triton.next_power_of_2(half),
        )
    return x


@triton.jit
def _store_kv_kernel(
    kbuf_ptr, vbuf_ptr, k_ptr, v_ptr, slot_ptr, k_stride, v_stride, buf_stride, WIDTH, BLOCK: tl.constexpr
):
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < WIDTH
    slot = tl.load(slot_ptr + t)
    k = tl.load(k_ptr + t * k_stride + cols, mask=mask)
    v = tl.load(v_ptr + t * v_stride + cols, mask=mask)
    tl.store(kbuf_ptr + slot * buf_stride + cols, k.to(kbuf_ptr.dtype.element_ty), mask=mask)
    tl.store(vbuf_ptr + slot * buf_stride + cols, v.to(vbuf_ptr.dtype.element_ty), mask=mask)


def store_kv_(
    k_buffer: torch.Tensor, v_buffer: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor
) -> None:
    """buffer[slots[t]] = k[t], v[t]. Buffers: contiguous [S, KVH, D]; k, v: [T, KVH, D] with each token's
    KVH * D values contiguous; slots: [T] int64, distinct and < S."""
    if (
        k_buffer.shape != v_buffer.shape
        or k_buffer.dtype != v_buffer.dtype
        or not (k_buffer.is_contiguous() and v_buffer.is_contiguous())
    ):
        raise ValueError("k_buffer and v_buffer must be contiguous and alike")
    if k.shape != v.shape or k.dim() != 3 or k.shape[1:] != k_buffer.shape[1:]:
        raise ValueError(
            f"k and v must be [T, {k_buffer.shape[1]}, {k_buffer.shape[2]}], got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    for name, t in (("k", k), ("v", v)):
        if t.stride(2) != 1 or t.stride(1) != t.shape[2]:
            raise ValueError(f"{name} must hold each token's heads contiguously, got strides {t.stride()}")
    if slots.shape != (k.shape[0],) or slots.dtype != torch.int64:
        raise ValueError(f"slots must be int64 [{k.shape[0]}], got {slots.dtype} {tuple(slots.shape)}")
    width = k.shape[1] * k.shape[2]
    block = min(1024, triton.next_power_of_2(width))
    if k.shape[0]:
        _store_kv_kernel[(k.shape[0], triton.cdiv(width, block))](
            k_buffer, v_buffer, k, v, slots, k.stride(0), v.stride(0), k_buffer.stride(0), width, BLOCK=block
        )
