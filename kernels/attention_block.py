"""The online-softmax step both attention kernels share, and what their wrappers need to call it.

`attend_block` gathers one block of keys and values through a slot-table row, scores it against a
matrix of query rows with `tl.dot` (log2 units: the scale is folded with log2(e) into `qk_scale`), and
folds it into the running max, sum and output. Extend attention calls it with a causal mask per row;
decode attention with every row seeing the whole split.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def attend_block(
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
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """One key block of the online softmax for R query rows: acc [R, BLOCK_D], l and m [R] (running sum
    and max, log2 units); q [R, BLOCK_D]; q_pos [R] (each row's position: a row sees keys <= it).
    Keys n0 .. n0 + BLOCK_N - 1 of the slot-table row `slot_row_ptr`, those < kv_end only (MASKED)."""
    n = n0 + tl.arange(0, BLOCK_N)
    if MASKED:
        n_mask = n < kv_end
        slots = tl.load(slot_row_ptr + n, mask=n_mask, other=0).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
    else:
        # Every key of the block is <= every query position: in the table row and visible to all rows.
        slots = tl.load(slot_row_ptr + n).to(tl.int64)
        kv_mask = d_mask[None, :]
    kv = slots[:, None] * kv_ss + kv_off + d[None, :]  # [N, BLOCK_D]
    k = tl.load(k_ptr + kv, mask=kv_mask, other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [R, N]
    if MASKED:
        s = tl.where((n[None, :] <= q_pos[:, None]) & n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    # A row with nothing visible yet keeps m = -inf; subtracting 0 instead keeps exp2 NaN-free (p = 0).
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_ref[:, None])
    alpha = tl.exp2(m - m_ref)  # 0 on a row's first visible block (m = -inf)
    l = l * alpha + tl.sum(p, axis=1)
    v = tl.load(v_ptr + kv, mask=kv_mask, other=0.0)
    # p is rounded to the pool dtype for the tensor-core product (a no-op for float32); sums stay float32.
    p_op = p.to(v.dtype)
    if DOT_F32:
        p_op = p_op.to(tl.float32)
        v = v.to(tl.float32)
    acc = tl.dot(p_op, v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, l, m_new


def interpreted() -> bool:
    """Whether the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import). The
    interpreter multiplies the raw bit patterns of bfloat16 tl.dot operands (triton-lang/triton#11584),
    so the wrappers then widen those operands to float32 (exact) through the DOT_F32 flag."""
    return not isinstance(attend_block, triton.runtime.JITFunction)
