"""RoPE and the KV store against their torch references on the `device` fixture (the Triton interpreter
on CPU by default, see conftest.py): random data from seeded CPU generators, odd sizes, strided views of
a fused qkv projection, non-contiguous slot tables, poisoned buffers. The references run on CPU."""

from __future__ import annotations

import pytest
import torch

from loomlm.kernels import reference, rope_kv


def _tables(max_pos: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
    return freqs.cos(), freqs.sin()


def _product_sizes(
    x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """|a cos| + |b sin| and |b cos| + |a sin|, laid out as RoPE's outputs a cos - b sin, b cos + a sin: the
    size of the two products each output element is the difference or sum of."""
    c, s = cos[positions].unsqueeze(1).abs(), sin[positions].unsqueeze(1).abs()
    xa = x.float().abs()
    if interleaved:
        a, b = xa[..., 0::2], xa[..., 1::2]
        return torch.stack((a * c + b * s, b * c + a * s), dim=-1).flatten(-2)
    a, b = xa.chunk(2, dim=-1)
    return torch.cat((a * c + b * s, b * c + a * s), dim=-1)


@pytest.mark.parametrize("tokens,heads,dim", [(1, 1, 64), (7, 4, 64), (9, 12, 128), (3, 5, 2)])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_matches_reference_on_a_qkv_view(tokens, heads, dim, interleaved, device):
    gen = torch.Generator().manual_seed(tokens * 100 + heads + dim)
    qkv = torch.randn(tokens, (heads + 3) * dim, generator=gen) * 2
    x = qkv[:, : heads * dim].view(tokens, heads, dim)  # row stride (heads + 3) * dim
    positions = torch.randint(0, 300, (tokens,), generator=gen)
    cos, sin = _tables(300, dim // 2)
    expected = reference.apply_rope_(x.clone(), positions, cos, sin, interleaved)
    sizes = _product_sizes(x, positions, cos, sin, interleaved)
    rest = qkv[:, heads * dim :].clone()
    qkv = qkv.to(device)
    x = qkv[:, : heads * dim].view(tokens, heads, dim)  # the same view of the moved projection
    rope_kv.apply_rope_(x, positions.to(device), cos.to(device), sin.to(device), interleaved)
    # Relative to the products' size, not to the output: a GPU compile may contract a*c - b*s into one
    # FMA (Triton's default fp fusion), which changes by an ulp of a*c the outputs where the two products
    # cancel; element-wise ratios against such near-0 outputs would measure that contraction.
    err = ((x.cpu() - expected).abs() / sizes.clamp_min(1e-6)).max().item()
    assert err <= 1e-5, err
    assert torch.equal(qkv[:, heads * dim :].cpu(), rest)  # v (and the rest of the row) untouched


def test_rope_rejects_bad_tables(device):
    x = torch.randn(2, 2, 8, device=device)
    with pytest.raises(ValueError, match="float32"):
        rope_kv.apply_rope_(
            x,
            torch.zeros(2, dtype=torch.int64, device=device),
            torch.ones(4, 3, device=device),
            torch.ones(4, 3, device=device),
        )


@pytest.mark.parametrize("tokens,kv_heads,dim", [(1, 1, 64), (9, 3, 64), (5, 8, 128)])
def test_store_kv_matches_reference(tokens, kv_heads, dim, device):
    gen = torch.Generator().manual_seed(tokens + kv_heads)
    slots = torch.randperm(50, generator=gen)[:tokens]  # scattered, not contiguous
    k = torch.randn(tokens, kv_heads, dim, generator=gen)
    v = torch.randn(tokens, kv_heads, dim, generator=gen)
    ref_k = torch.full((50, kv_heads, dim), float("nan"))
    ref_v = torch.full((50, kv_heads, dim), float("nan"))
    reference.store_kv_(ref_k, ref_v, k, v, slots)
    kbuf = torch.full((50, kv_heads, dim), float("nan"), device=device)
    vbuf = torch.full((50, kv_heads, dim), float("nan"), device=device)
    rope_kv.store_kv_(kbuf, vbuf, k.to(device), v.to(device), slots.to(device))
    kbuf, vbuf = kbuf.cpu(), vbuf.cpu()
    assert torch.equal(kbuf.nan_to_num(7.0), ref_k.nan_to_num(7.0))
    assert torch.equal(vbuf.nan_to_num(7.0), ref_v.nan_to_num(7.0))
    assert torch.isfinite(kbuf[slots]).all()


def test_store_kv_from_a_fused_projection_view(device):
    qkv = torch.randn(4, 3 * 2 * 8, generator=torch.Generator().manual_seed(48))
    slots = torch.tensor([9, 0, 4, 2])
    moved = qkv.to(device)
    k = moved[:, 16:32].view(4, 2, 8)  # each token's heads contiguous, row stride 48
    v = moved[:, 32:].view(4, 2, 8)
    kbuf = torch.zeros(10, 2, 8, device=device)
    vbuf = torch.zeros(10, 2, 8, device=device)
    rope_kv.store_kv_(kbuf, vbuf, k, v, slots.to(device))
    assert torch.equal(kbuf.cpu()[slots], qkv[:, 16:32].view(4, 2, 8))
    assert torch.equal(vbuf.cpu()[slots], qkv[:, 32:].view(4, 2, 8))
