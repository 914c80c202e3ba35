"""Element-wise Triton kernels against their torch references, on the `device` fixture (the Triton
interpreter on CPU by default, see conftest.py): random inputs (never zeros), odd sizes, outputs poisoned
first so unwritten elements fail. Inputs come from seeded CPU generators; the references run on CPU."""

from __future__ import annotations

import pytest
import torch

from loomlm.kernels import fused_ops, reference


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    a, b = a.cpu(), b.cpu()
    assert torch.isfinite(a).all() == torch.isfinite(b).all()
    err = ((a.float() - b.float()).abs() / b.float().abs().clamp_min(1e-6)).max().item()
    assert err <= 1e-5, err


def _poisoned(like: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    return torch.full(like.shape if shape is None else shape, float("nan"), dtype=like.dtype, device=like.device)


@pytest.mark.parametrize("rows,hidden", [(1, 64), (3, 96), (9, 576), (5, 1)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(rows, hidden, with_residual, device):
    gen = torch.Generator().manual_seed(rows * 1000 + hidden)
    x = torch.randn(rows, hidden, generator=gen) * 3 + 0.5
    weight = torch.rand(hidden, generator=gen) + 0.5
    residual = torch.randn(rows, hidden, generator=gen) if with_residual else None
    ref_out, ref_res = reference.rms_norm(x, weight, 1e-5, residual)
    x, weight = x.to(device), weight.to(device)
    residual = residual.to(device) if with_residual else None
    out = _poisoned(x)
    res_out = _poisoned(x) if with_residual else None
    got, res = fused_ops.rms_norm(x, weight, 1e-5, residual, out=out, residual_out=res_out)
    assert got is out and res is res_out
    _close(out, ref_out)
    if with_residual:
        assert torch.equal(res.cpu(), ref_res)
    # Without out=, fresh outputs (the existing positional call).
    default_out, default_res = fused_ops.rms_norm(x, weight, 1e-5, residual)
    assert torch.equal(default_out, out) and (default_res is None) == (not with_residual)


def test_rms_norm_in_place_residual(device):
    """residual_out=residual: the layer's residual stream updated in place, x + residual in x's dtype."""
    gen = torch.Generator().manual_seed(77)
    x = torch.randn(7, 320, generator=gen) * 2
    weight = torch.rand(320, generator=gen) + 0.5
    residual = torch.randn(7, 320, generator=gen)
    ref_out, ref_res = reference.rms_norm(x, weight, 1e-6, residual.clone())
    x, weight, residual = x.to(device), weight.to(device), residual.to(device)
    out = _poisoned(x)
    got, res = fused_ops.rms_norm(x, weight, 1e-6, residual, out=out, residual_out=residual)
    assert got is out and res is residual
    assert torch.equal(residual.cpu(), ref_res)
    _close(out, ref_out)


def test_rms_norm_strided_rows(device):
    gen = torch.Generator().manual_seed(130)
    base = torch.randn(6, 130, generator=gen)
    weight = torch.rand(128, generator=gen) + 0.5
    expected = reference.rms_norm(base[:, :128], weight, 1e-6)[0]
    x = base.to(device)[:, :128]  # row stride 130, last dimension contiguous
    storage = torch.full((6, 140), float("nan"), device=device)
    out = storage[:, :128]  # a strided output: row stride 140
    assert x.stride() == (130, 1) and out.stride() == (140, 1)
    fused_ops.rms_norm(x, weight.to(device), 1e-6, out=out)
    _close(out, expected)
    assert storage[:, 128:].isnan().all()


@pytest.mark.parametrize("rows,inter", [(1, 1), (4, 37), (9, 1536), (2, 2500)])
def test_silu_and_mul_matches_reference(rows, inter, device):
    x = torch.randn(rows, 2 * inter, generator=torch.Generator().manual_seed(inter)) * 4
    expected = reference.silu_and_mul(x)
    x = x.to(device)
    out = _poisoned(x, (rows, inter))
    assert fused_ops.silu_and_mul(x, out=out) is out
    _close(out, expected)
    _close(fused_ops.silu_and_mul(x), expected)


@pytest.mark.parametrize("batch,vocab", [(1, 31), (3, 100), (9, 1000), (2, 2049)])
def test_bitmask_matches_reference(batch, vocab, device):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(batch + 2, vocab, generator=gen)
    width = (vocab + 31) // 32
    bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, width), generator=gen, dtype=torch.int64).to(torch.int32)
    rows = torch.randperm(batch + 2, generator=gen)[:batch]
    expected = reference.apply_token_bitmask_(logits.clone(), bitmask, rows)
    got = fused_ops.apply_token_bitmask_(logits.clone().to(device), bitmask.to(device), rows.to(device))
    got = got.cpu()
    assert torch.equal(got, expected)
    untouched = torch.ones(batch + 2, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(got[untouched], logits[untouched])


def test_bitmask_matches_grammar_masks(device):
    """The kernel reads the grammar engine's packed layout: bit t % 32 of word t // 32."""
    allowed = torch.tensor([0, 5, 31, 32, 63, 64, 99])
    words = torch.zeros(4, dtype=torch.int64)
    for t in allowed.tolist():
        words[t // 32] |= 1 << (t % 32)
    bitmask = words.to(torch.int32).view(1, 4)  # bit 31 wraps to the sign bit, as numpy's int32 does
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(100)).to(device)
    fused_ops.apply_token_bitmask_(logits, bitmask.to(device))
    assert torch.isfinite(logits[0].cpu()).nonzero().flatten().tolist() == allowed.tolist()


def test_wrappers_reject_bad_shapes(device):
    with pytest.raises(ValueError, match="weight must be"):
        fused_ops.rms_norm(torch.randn(2, 8, device=device), torch.ones(7, device=device), 1e-5)
    with pytest.raises(ValueError, match="even width"):
        fused_ops.silu_and_mul(torch.randn(2, 7, device=device))
    with pytest.raises(ValueError, match="bitmask must be int32"):
        fused_ops.apply_token_bitmask_(
            torch.randn(2, 64, device=device), torch.zeros(2, 3, dtype=torch.int32, device=device)
        )
    with pytest.raises(ValueError, match="contiguous"):
        fused_ops.rms_norm(torch.randn(8, 4, device=device).t(), torch.ones(8, device=device), 1e-5)


def test_wrappers_reject_bad_outputs(device):
    x, weight = torch.randn(4, 8, device=device), torch.ones(8, device=device)
    residual = torch.randn(4, 8, device=device)

    def empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=device)

    with pytest.raises(ValueError, match="out must be"):
        fused_ops.rms_norm(x, weight, 1e-5, out=empty(4, 7))
    with pytest.raises(ValueError, match="out must be"):
        fused_ops.rms_norm(x, weight, 1e-5, out=empty(4, 8, dtype=torch.float16))
    with pytest.raises(ValueError, match="out must be contiguous"):
        fused_ops.rms_norm(x, weight, 1e-5, out=empty(8, 4).t())
    with pytest.raises(ValueError, match="residual_out needs a residual"):
        fused_ops.rms_norm(x, weight, 1e-5, residual_out=empty(4, 8))
    with pytest.raises(ValueError, match="residual_out must be"):
        fused_ops.rms_norm(x, weight, 1e-5, residual, residual_out=empty(3, 8))
    shared = empty(4, 8)
    with pytest.raises(ValueError, match="same memory"):
        fused_ops.rms_norm(x, weight, 1e-5, residual, out=shared, residual_out=shared)
    with pytest.raises(ValueError, match="out must be"):
        fused_ops.silu_and_mul(x, out=empty(4, 8))
    with pytest.raises(ValueError, match="out must be"):
        fused_ops.silu_and_mul(x, out=empty(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="out must be contiguous"):
        fused_ops.silu_and_mul(x, out=empty(4, 4).t())
