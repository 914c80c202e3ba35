"""loomlm's C++ CPU kernels (kernels/cpu_kernels.py) against the pure-torch references of
kernels/reference.py: random shapes, dtypes and strides (hypothesis), float32 to rounding and the half
dtypes to one rounding step; decode attention over scattered slots, with and without split-KV chunks;
refusals that name the problem; and a build that fails (no compiler) reported, not raised, by
`unavailable_reason`.

The extension is built once per machine (~25 s) into the loomlm cache; every later process loads it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.kernels import cpu_kernels, reference

K = cpu_kernels.load()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# One rounding of the result to the dtype, plus float32 summation order: a few ulps of the dtype.
TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL[dtype], atol=TOL[dtype])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 70),
    hidden=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    with_residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rms_norm_matches_the_reference(rows, hidden, dtype, with_residual, seed):
    g = _gen(seed)
    x = torch.randn(rows, hidden, generator=g).to(dtype)
    w = torch.randn(hidden, generator=g).to(dtype)
    residual = torch.randn(rows, hidden, generator=g).to(dtype) if with_residual else None
    out, summed = K.rms_norm(x, w, residual, 1e-5)
    ref_out, ref_summed = reference.rms_norm(x, w, 1e-5, residual)
    _close(out, ref_out, dtype)
    if with_residual:
        assert torch.equal(summed, ref_summed)  # the residual stream is the rounded sum, bit for bit
    else:
        assert summed is x


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), inter=st.integers(1, 200), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_silu_and_mul_matches_the_reference(rows, inter, dtype, seed):
    x = (torch.randn(rows, 2 * inter, generator=_gen(seed)) * 4).to(dtype)
    _close(K.silu_and_mul(x), reference.silu_and_mul(x), dtype)


@settings(max_examples=25, deadline=None)
@given(
    tokens=st.integers(1, 20),
    heads=st.integers(1, 6),
    half=st.sampled_from([1, 8, 16, 32]),
    extra=st.integers(0, 3),  # columns after q/k in the fused projection (v): a strided view
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_rope_in_place_on_a_strided_view_matches_the_reference(tokens, heads, half, extra, dtype, seed):
    g = _gen(seed)
    D = 2 * half
    fused = torch.randn(tokens, (heads + extra) * D, generator=g).to(dtype)
    positions = torch.randint(0, 64, (tokens,), generator=g)
    cos, sin = torch.randn(64, half, generator=g), torch.randn(64, half, generator=g)
    view = fused[:, : heads * D].view(tokens, heads, D)
    want = reference.apply_rope_(view.clone(), positions, cos, sin)
    untouched = fused[:, heads * D :].clone()
    assert K.rope_(view, positions, cos, sin).data_ptr() == view.data_ptr()
    _close(view, want, dtype)
    assert torch.equal(fused[:, heads * D :], untouched)


def _decode_case(seed, batch, kv_heads, group, head_dim, lengths, dtype):
    g = _gen(seed)
    slots_total = sum(lengths) + 8
    k_buf = torch.randn(slots_total, kv_heads, head_dim, generator=g).to(dtype)
    v_buf = torch.randn(slots_total, kv_heads, head_dim, generator=g).to(dtype)
    table = torch.zeros(batch + 2, max(lengths) + 3, dtype=torch.int32)
    rows = torch.randperm(batch + 2, generator=g)[:batch]
    free = torch.randperm(slots_total, generator=g)  # scattered slots, as a busy pool hands them out
    taken = 0
    for b, n in enumerate(lengths):
        table[rows[b], :n] = free[taken : taken + n].to(torch.int32)
        taken += n
    heads = kv_heads * group
    # q, k, v as views of one fused projection, as the model passes them
    fused = (torch.randn(batch, (heads + 2 * kv_heads) * head_dim, generator=g) * 2).to(dtype)
    q = fused[:, : heads * head_dim].view(batch, heads, head_dim)
    k = fused[:, heads * head_dim : (heads + kv_heads) * head_dim].view(batch, kv_heads, head_dim)
    v = fused[:, (heads + kv_heads) * head_dim :].view(batch, kv_heads, head_dim)
    out_slots = torch.stack([table[rows[b], n - 1] for b, n in enumerate(lengths)]).to(torch.int64)
    return q, k, v, k_buf, v_buf, out_slots, table, rows.to(torch.int64), torch.tensor(lengths)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 6),
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 4),
    head_dim=st.sampled_from([8, 16, 24, 64]),
    lengths=st.data(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_decode_attention_stores_then_matches_the_reference(batch, kv_heads, group, head_dim, lengths, dtype, seed):
    lens = lengths.draw(st.lists(st.integers(1, 300), min_size=batch, max_size=batch))
    q, k, v, k_buf, v_buf, out_slots, table, rows, seq = _decode_case(
        seed, batch, kv_heads, group, head_dim, lens, dtype
    )
    want_k, want_v = k_buf.clone(), v_buf.clone()
    reference.store_kv_(want_k, want_v, k, v, out_slots)
    want = reference.decode_attention(q, want_k, want_v, table, rows, seq, head_dim**-0.5)
    got = K.decode_attention(q, k, v, k_buf, v_buf, out_slots, table, rows, seq, head_dim**-0.5)
    assert torch.equal(k_buf, want_k) and torch.equal(v_buf, want_v)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_a_rows_attention_is_the_same_bits_alone_or_in_any_batch_on_any_thread_count(dtype, threads):
    """Keys are split in blocks of a fixed size, so a row's sums are rounded the same way whatever else is
    in the batch and however many threads run it: what makes a speculative verify row equal the decode
    step at its position. Lengths straddle the block size (256)."""
    lens = [257, 3, 600, 256, 90]
    q, k, v, k_buf, v_buf, out_slots, table, rows, seq = _decode_case(3, len(lens), 2, 3, 64, lens, dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = [
            K.decode_attention(
                q[i : i + 1],
                k[i : i + 1],
                v[i : i + 1],
                k_buf.clone(),
                v_buf.clone(),
                out_slots[i : i + 1],
                table,
                rows[i : i + 1],
                seq[i : i + 1],
                0.125,
            )
            for i in range(len(lens))
        ]
        torch.set_num_threads(threads)
        together = K.decode_attention(q, k, v, k_buf, v_buf, out_slots, table, rows, seq, 0.125)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(together, torch.cat(alone))


def test_refusals_name_the_op_and_the_problem():
    x = torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="rms_norm"):
        K.rms_norm(x, torch.ones(8, dtype=torch.float64), None, 1e-5)
    with pytest.raises(RuntimeError, match=r"silu_and_mul: x must be \[T, 2I\]"):
        K.silu_and_mul(torch.randn(2, 7))
    with pytest.raises(RuntimeError, match="position out of the table"):
        K.rope_(torch.randn(1, 1, 4), torch.tensor([9]), torch.randn(4, 2), torch.randn(4, 2))
    q, k, v, k_buf, v_buf, out_slots, table, rows, seq = _decode_case(0, 1, 1, 1, 8, [5], torch.float32)
    with pytest.raises(RuntimeError, match="sequence length out of range"):
        K.decode_attention(q, k, v, k_buf, v_buf, out_slots, table, rows, torch.tensor([10**6]), 1.0)
    with pytest.raises(RuntimeError, match="slot out of range"):
        K.decode_attention(q, k, v, k_buf, v_buf, torch.tensor([10**6]), table, rows, seq, 1.0)


def test_a_failed_build_is_reported_with_the_compilers_reason(tmp_path):
    """No usable compiler (CXX=/bin/false) and an empty cache: `load` raises CpuKernelsUnavailable, once,
    and `unavailable_reason` says why, so the engine falls back to the torch ops."""
    script = textwrap.dedent(
        """
        from loomlm.kernels import cpu_kernels
        why = cpu_kernels.unavailable_reason()
        assert why is not None and why.startswith("building the CPU kernels failed"), why
        assert cpu_kernels.unavailable_reason() == why  # not rebuilt on every call
        print("REASON", why)
        """
    )
    env = {**os.environ, "CXX": "/bin/false", "LOOMLM_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REASON" in done.stdout
