"""RoPE and the KV store against their torch references in the Triton interpreter (random data, odd
sizes, strided views of a fused qkv projection, non-contiguous slot tables, poisoned buffers)."""

from __future__ import annotations

import pytest
import torch

from loomlm.kernels import reference, rope_kv


def _tables(max_pos: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
    return freqs.cos(), freqs.sin()


@pytest.mark.parametrize("tokens,heads,dim", [(1, 1, 64), (7, 4, 64), (9, 12, 128), (3, 5, 2)])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_matches_reference_on_a_qkv_view(tokens, heads, dim, interleaved):
    gen = torch.Generator().manual_seed(tokens * 100 + heads + dim)
    qkv = torch.randn(tokens, (heads + 3) * dim, generator=gen) * 2
    x = qkv[:, : heads * dim].view(tokens, heads, dim)          # row stride (heads + 3) * dim
    positions = torch.randint(0, 300, (tokens,), generator=gen)
    cos, sin = _tables(300, dim // 2)
    expected = reference.apply_rope_(x.clone(), positions, cos, sin, interleaved)
    rest = qkv[:, heads * dim:].clone()
    rope_kv.apply_rope_(x, positions, cos, sin, interleaved)
    err = ((x - expected).abs() / expected.abs().clamp_min(1e-6)).max().item()
    assert err <= 1e-5
    assert torch.equal(qkv[:, heads * dim:], rest)             # v (and the rest of the row) untouched


def test_rope_rejects_bad_tables():
    x = torch.randn(2, 2, 8)
    with pytest.raises(ValueError, match="float32"):
        rope_kv.apply_rope_(x, torch.zeros(2, dtype=torch.int64), torch.ones(4, 3), torch.ones(4, 3))


@pytest.mark.parametrize("tokens,kv_heads,dim", [(1, 1, 64), (9, 3, 64), (5, 8, 128)])
def test_store_kv_matches_reference(tokens, kv_heads, dim):
    gen = torch.Generator().manual_seed(tokens + kv_heads)
    slots = torch.randperm(50, generator=gen)[:tokens]            # scattered, not contiguous
    k = torch.randn(tokens, kv_heads, dim, generator=gen)
    v = torch.randn(tokens, kv_heads, dim, generator=gen)
    kbuf = torch.full((50, kv_heads, dim), float("nan"))
    vbuf = torch.full((50, kv_heads, dim), float("nan"))
    ref_k, ref_v = kbuf.clone(), vbuf.clone()
    reference.store_kv_(ref_k, ref_v, k, v, slots)
    rope_kv.store_kv_(kbuf, vbuf, k, v, slots)
    assert torch.equal(kbuf.nan_to_num(7.0), ref_k.nan_to_num(7.0))
    assert torch.equal(vbuf.nan_to_num(7.0), ref_v.nan_to_num(7.0))
    assert torch.isfinite(kbuf[slots]).all()


def test_store_kv_from_a_fused_projection_view():
    qkv = torch.randn(4, 3 * 2 * 8)
    k = qkv[:, 16:32].view(4, 2, 8)      # each token's heads contiguous, row stride 48
    v = qkv[:, 32:].view(4, 2, 8)
    kbuf, vbuf = torch.zeros(10, 2, 8), torch.zeros(10, 2, 8)
    slots = torch.tensor([9, 0, 4, 2])
    rope_kv.store_kv_(kbuf, vbuf, k, v, slots)
    assert torch.equal(kbuf[slots], k) and torch.equal(vbuf[slots], v)
