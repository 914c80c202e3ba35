"""Decode attention over the token-slot KV pool in Triton: split-KV (flash-decoding) and a merge pass.

Stage 1, one program per (request, KV head, split): the query heads that share the KV head (GQA group)
are processed together, as the rows of one `tl.dot` operand; keys and values are gathered through the
request's row of `req_to_token`, a block of `BLOCK_N` tokens at a time, with an online softmax in
float32. Each split writes its normalised partial output and its log-sum-exp. Stage 2, one program per
(request, query head), merges the splits weighted by 2^(lse - max lse) (log-sum-exps are kept in log2
units). Splitting a long context over programs is what keeps the whole GPU busy at small batch.
Arithmetic as in `reference.decode_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loomlm.kernels.attention_block import LOG2E, attend_block, interpreted

# Enough programs (batch x KV heads x splits) per SM to hide the gather latency; more splits only add
# merge work.
PROGRAMS_PER_SM = 4
MAX_KV_SPLITS = 16


def default_num_kv_splits(
    batch: int, kv_heads: int, sm_count: int, programs_per_sm: int = PROGRAMS_PER_SM, max_splits: int = MAX_KV_SPLITS
) -> int:
    """Splits per request's context: many at small batch (one request must use the whole GPU), one when
    the batch alone fills it. It ignores the context length on purpose: a captured decode graph serves
    every length."""
    return max(1, min(max_splits, triton.cdiv(programs_per_sm * sm_count, batch * kv_heads)))


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    r2t_ptr,
    rows_ptr,
    lens_ptr,
    mid_o_ptr,
    mid_lse_ptr,
    q_sb,
    q_sh,
    kv_ss,
    kv_sh,
    r2t_s,
    mo_sb,
    mo_sh,
    mo_ss,
    ml_sb,
    ml_sh,
    qk_scale,
    NUM_SPLITS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(lens_ptr + b)
    row = tl.load(rows_ptr + b).to(tl.int64)
    # Each request spreads its own context over the splits (whole blocks each), so no host-side
    # maximum is needed and a captured CUDA graph serves any context length.
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    # The GROUP query heads of this KV head are the rows of one [BLOCK_H, D] matrix (padded to the 16
    # rows tl.dot needs), so both products run on tensor cores and the K/V block is read once per group.
    h = tl.arange(0, BLOCK_H)
    heads = kvh * GROUP + h
    h_mask = h < GROUP
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(
        q_ptr + b * q_sb + heads[:, None] * q_sh + d[None, :], mask=h_mask[:, None] & d_mask[None, :], other=0.0
    )  # [H, D]
    if DOT_F32:
        q = q.to(tl.float32)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)  # running max, log2 units
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    q_pos = tl.full([BLOCK_H], 0, tl.int32) + seq_len  # every key of the split is visible
    slot_row_ptr = r2t_ptr + row * r2t_s
    for n0 in range(start, end, BLOCK_N):
        acc, l, m = attend_block(
            acc,
            l,
            m,
            q,
            q_pos,
            k_ptr,
            v_ptr,
            slot_row_ptr,
            kvh * kv_sh,
            kv_ss,
            n0,
            end,
            qk_scale,
            d,
            d_mask,
            MASKED=True,
            BLOCK_N=BLOCK_N,
            PRECISION=PRECISION,
            DOT_F32=DOT_F32,
        )
    has = l > 0  # an empty split (short context) has none
    out = tl.where(has[:, None], acc / tl.where(has, l, 1.0)[:, None], 0.0)
    lse = tl.where(has, m + tl.log2(tl.where(has, l, 1.0)), float("-inf"))  # log2 units
    tl.store(
        mid_o_ptr + b * mo_sb + heads[:, None] * mo_sh + split * mo_ss + d[None, :],
        out,
        mask=h_mask[:, None] & d_mask[None, :],
    )
    tl.store(mid_lse_ptr + b * ml_sb + heads * ml_sh + split, lse, mask=h_mask)


@triton.jit
def _decode_merge_kernel(
    mid_o_ptr,
    mid_lse_ptr,
    out_ptr,
    mo_sb,
    mo_sh,
    mo_ss,
    ml_sb,
    ml_sh,
    o_sb,
    o_sh,
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    s_mask = s < num_splits
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    lse = tl.load(mid_lse_ptr + b * ml_sb + h * ml_sh + s, mask=s_mask, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))  # log2 units; empty splits: exp2(-inf) = 0
    parts = tl.load(
        mid_o_ptr + b * mo_sb + h * mo_sh + s[:, None] * mo_ss + d[None, :],
        mask=s_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    out = tl.sum(w[:, None] * parts, axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + b * o_sb + h * o_sh + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_kv_splits: int = 8,
    block_n: int = 64,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.decode_attention`. Each request's context is cut into `num_kv_splits`
    parts (whole blocks of `block_n` keys; short contexts leave some parts empty). Nothing is read back
    to the host, so the call can be captured in a CUDA graph; `out` may be given (written entirely)."""
    if q.dim() != 3 or q.stride(2) != 1:
        raise ValueError(f"q must be [batch, heads, head_dim] with a contiguous last dim, got {tuple(q.shape)}")
    batch, heads, dim = q.shape
    same = k_buffer.shape == v_buffer.shape and k_buffer.dtype == v_buffer.dtype
    if (
        not same
        or k_buffer.dim() != 3
        or k_buffer.shape[2] != dim
        or not k_buffer.is_contiguous()
        or not v_buffer.is_contiguous()
    ):
        raise ValueError(
            f"k/v buffers must be alike, contiguous [slots, kv_heads, {dim}], got "
            f"{tuple(k_buffer.shape)} and {tuple(v_buffer.shape)}"
        )
    kv_heads = k_buffer.shape[1]
    if q.dtype != k_buffer.dtype or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(
            f"q and the k/v buffers must share one float dtype (float32, float16 or bfloat16), "
            f"got {q.dtype} and {k_buffer.dtype}"
        )
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not divide into {kv_heads} KV heads")
    for name, t in (("req_rows", req_rows), ("seq_lens", seq_lens)):
        if t.shape != (batch,) or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be an integer [{batch}] tensor, got {t.dtype} {tuple(t.shape)}")
    if req_to_token.dim() != 2 or req_to_token.stride(1) != 1:
        raise ValueError(
            f"req_to_token must be a [rows, max_len] slot table with contiguous rows, got "
            f"shape {tuple(req_to_token.shape)} strides {req_to_token.stride()}"
        )
    if num_kv_splits < 1 or block_n < 16 or block_n & (block_n - 1):
        raise ValueError(
            f"num_kv_splits must be >= 1 and block_n a power of two >= 16, got {num_kv_splits} and {block_n}"
        )
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(2) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    if batch == 0:
        return out
    splits = num_kv_splits
    group = heads // kv_heads
    mid_o = torch.empty((batch, heads, splits, dim), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((batch, heads, splits), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(dim))
    dot_f32 = q.dtype == torch.bfloat16 and interpreted()
    _decode_split_kernel[(batch, kv_heads, splits)](
        q,
        k_buffer,
        v_buffer,
        req_to_token,
        req_rows,
        seq_lens,
        mid_o,
        mid_lse,
        q.stride(0),
        q.stride(1),
        k_buffer.stride(0),
        k_buffer.stride(1),
        req_to_token.stride(0),
        mid_o.stride(0),
        mid_o.stride(1),
        mid_o.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        float(scale) * LOG2E,
        NUM_SPLITS=splits,
        GROUP=group,
        BLOCK_H=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        PRECISION="ieee" if q.dtype == torch.float32 or dot_f32 else "tf32",
        DOT_F32=dot_f32,
    )
    _decode_merge_kernel[(batch, heads)](
        mid_o,
        mid_lse,
        out,
        mid_o.stride(0),
        mid_o.stride(1),
        mid_o.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        out.stride(0),
        out.stride(1),
        splits,
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        BLOCK_S=triton.next_power_of_2(splits),
    )
    return out
