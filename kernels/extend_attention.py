"""Extend (prefill) attention over the token-slot KV pool in Triton: flash attention with a cached prefix.

The new tokens of B requests (q: [T, H, D], back to back) attend to their request's cached prefix and,
causally, to each other; their own K/V are already in the pool. One program per (request, KV head, block
of BLOCK_M new tokens) takes the block's queries for all GROUP query heads of that KV head at once, as
BLOCK_M * BLOCK_G rows of one matrix, so each key/value block gathered through `req_to_token` is loaded
once per group and both products are `tl.dot`s. Key blocks of BLOCK_N run from 0 to the last key the
block's queries see: blocks wholly before the block's first query position need no mask, the rest get
the causal one. Online softmax in float32 (exp2 with the scale folded in). Arithmetic as in
`reference.extend_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loomlm.kernels.attention_block import LOG2E, attend_block, interpreted

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INDEX = (torch.int32, torch.int64)


@triton.jit
def _extend_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    r2t_ptr,
    rows_ptr,
    prefix_ptr,
    ext_len_ptr,
    ext_start_ptr,
    q_st,
    q_sh,
    o_st,
    o_sh,
    kv_ss,
    kv_sh,
    r2t_s,
    qk_scale,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    ext_len = tl.load(ext_len_ptr + b)
    if m0 >= ext_len:  # the grid is sized for the longest extend of the batch
        return
    prefix = tl.load(prefix_ptr + b)
    start = tl.load(ext_start_ptr + b).to(tl.int64)
    row = tl.load(rows_ptr + b).to(tl.int64)
    # Row r of the block is new token m0 + r // BLOCK_G, query head kvh * GROUP + r % BLOCK_G.
    r = tl.arange(0, BLOCK_M * BLOCK_G)
    e = m0 + r // BLOCK_G
    g = r % BLOCK_G
    row_mask = (e < ext_len) & (g < GROUP)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    tok = start + e
    heads = kvh * GROUP + g
    q = tl.load(
        q_ptr + tok[:, None] * q_st + heads[:, None] * q_sh + d[None, :],
        mask=row_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [R, BLOCK_D]
    if DOT_F32:
        q = q.to(tl.float32)
    q_pos = prefix + e
    m = tl.full([BLOCK_M * BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M * BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_M * BLOCK_G, BLOCK_D], tl.float32)
    slot_row_ptr = r2t_ptr + row * r2t_s
    kv_off = kvh * kv_sh
    kv_end = prefix + tl.minimum(m0 + BLOCK_M, ext_len)  # one past the last key of the block's last query
    full_end = (prefix + m0 + 1) // BLOCK_N * BLOCK_N  # blocks below: keys <= the first query position
    for n0 in range(0, full_end, BLOCK_N):
        acc, l, m = attend_block(
            acc,
            l,
            m,
            q,
            q_pos,
            k_ptr,
            v_ptr,
            slot_row_ptr,
            kv_off,
            kv_ss,
            n0,
            kv_end,
            qk_scale,
            d,
            d_mask,
            MASKED=False,
            BLOCK_N=BLOCK_N,
            PRECISION=PRECISION,
            DOT_F32=DOT_F32,
        )
    for n0 in range(full_end, kv_end, BLOCK_N):
        acc, l, m = attend_block(
            acc,
            l,
            m,
            q,
            q_pos,
            k_ptr,
            v_ptr,
            slot_row_ptr,
            kv_off,
            kv_ss,
            n0,
            kv_end,
            qk_scale,
            d,
            d_mask,
            MASKED=True,
            BLOCK_N=BLOCK_N,
            PRECISION=PRECISION,
            DOT_F32=DOT_F32,
        )
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(
        out_ptr + tok[:, None] * o_st + heads[:, None] * o_sh + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & d_mask[None, :],
    )


def extend_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    extend_starts: torch.Tensor,
    scale: float,
    max_extend: int,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int = 64,
) -> torch.Tensor:
    """Same contract as `reference.extend_attention`. `max_extend` (>= every extend_len, known on the host
    to the scheduler) sizes the grid without a device sync; `out` may be given (every new token's row is
    written). `block_m` (new tokens per program; default: about 128 query rows per program with the GQA
    group) and `block_n` (keys per step) are powers of two >= 16."""
    if q.dim() != 3 or q.stride(2) != 1 or q.dtype not in _FLOATS:
        raise ValueError(
            f"q must be a float [tokens, heads, head_dim] tensor with a contiguous last dim, "
            f"got {q.dtype} shape {tuple(q.shape)} strides {q.stride()}"
        )
    tokens, heads, dim = q.shape
    if (
        k_buffer.shape != v_buffer.shape
        or k_buffer.dim() != 3
        or k_buffer.shape[2] != dim
        or not k_buffer.is_contiguous()
        or not v_buffer.is_contiguous()
    ):
        raise ValueError(
            f"k/v buffers must be alike, contiguous [slots, kv_heads, {dim}], got "
            f"{tuple(k_buffer.shape)} and {tuple(v_buffer.shape)}"
        )
    if k_buffer.dtype != q.dtype or v_buffer.dtype != q.dtype:
        raise ValueError(f"k/v buffers must have q's dtype {q.dtype}, got {k_buffer.dtype} and {v_buffer.dtype}")
    kv_heads = k_buffer.shape[1]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"{heads} query heads do not divide into {kv_heads} KV heads")
    batch = req_rows.shape[0] if req_rows.dim() == 1 else -1
    for name, t in (
        ("req_rows", req_rows),
        ("prefix_lens", prefix_lens),
        ("extend_lens", extend_lens),
        ("extend_starts", extend_starts),
    ):
        if t.dim() != 1 or t.shape[0] != batch or t.dtype not in _INDEX:
            raise ValueError(
                f"{name} must be an int32/int64 [batch] tensor like req_rows, got {t.dtype} {tuple(t.shape)}"
            )
    if req_to_token.dim() != 2 or req_to_token.stride(1) != 1 or req_to_token.dtype not in _INDEX:
        raise ValueError(
            f"req_to_token must be an int32/int64 [rows, max_len] slot table with contiguous "
            f"rows, got {req_to_token.dtype} shape {tuple(req_to_token.shape)} strides "
            f"{req_to_token.stride()}"
        )
    for name, t in (
        ("k_buffer", k_buffer),
        ("v_buffer", v_buffer),
        ("req_to_token", req_to_token),
        ("req_rows", req_rows),
        ("prefix_lens", prefix_lens),
        ("extend_lens", extend_lens),
        ("extend_starts", extend_starts),
    ):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    if max_extend < 1:
        raise ValueError(f"max_extend must be >= 1, got {max_extend}")
    block_g = triton.next_power_of_2(heads // kv_heads)
    if block_m is None:
        block_m = max(16, (128 if dim <= 128 else 64) // block_g)
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot), got {size}")
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(2) != 1:
        raise ValueError(
            f"out must be {tuple(q.shape)} {q.dtype} on {q.device} with a contiguous last dim, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device} strides {out.stride()}"
        )
    if batch == 0 or tokens == 0:
        return out
    block_d = max(16, triton.next_power_of_2(dim))
    # Warps from `python tools/kernel_compile_check.py`'s register counts (not timed yet): 8 warps
    # halve a 16-bit D=64 program's registers (231 -> 123); float32 at D <= 64 needs 255 with 8, 32 with 4.
    # The Triton interpreter (tests, CPU) multiplies the raw bit patterns of bfloat16 operands in tl.dot
    # (triton-lang/triton#11584, unsupported upstream): there the operands are widened to float32
    # first, which is exact, so the arithmetic is the GPU's (bf16 products summed in float32). Under
    dot_f32 = q.dtype == torch.bfloat16 and interpreted()
    _extend_kernel[(batch, kv_heads, triton.cdiv(max_extend, block_m))](
        q,
        k_buffer,
        v_buffer,
        out,
        req_to_token,
        req_rows,
        prefix_lens,
        extend_lens,
        extend_starts,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_buffer.stride(0),
        k_buffer.stride(1),
        req_to_token.stride(0),
        float(scale) * LOG2E,
        GROUP=heads // kv_heads,
        BLOCK_G=block_g,
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PRECISION="ieee" if q.dtype == torch.float32 or dot_f32 else "tf32",
        DOT_F32=dot_f32,
        num_warps=4 if q.dtype == torch.float32 and block_d <= 64 else 8,
    )
    return out
