"""Split-KV decode attention against the torch reference on the `device` fixture (the Triton interpreter
on CPU by default, see conftest.py): random contexts of 1..300 tokens, GQA ratios 1, 3 and 8, head dims
64 and 128, batches 1..9, scattered slot tables, rows of the slot table that are not the batch order,
and a NaN-poisoned output. Inputs come from seeded CPU generators; the reference runs on CPU."""

from __future__ import annotations

import pytest
import torch

from loomlm.kernels import decode_attention as triton_decode
from loomlm.kernels import reference


def _case(batch: int, kv_heads: int, group: int, dim: int, seed: int, max_len: int = 300):
    gen = torch.Generator().manual_seed(seed)
    heads = kv_heads * group
    seq_lens = torch.randint(1, max_len + 1, (batch,), generator=gen)
    slots_total = int(seq_lens.sum()) + 17
    k_buffer = torch.randn(slots_total, kv_heads, dim, generator=gen)
    v_buffer = torch.randn(slots_total, kv_heads, dim, generator=gen)
    perm = torch.randperm(slots_total, generator=gen)  # each request's slots scattered over the pool
    rows = torch.randperm(batch + 3, generator=gen)[:batch]
    req_to_token = torch.full((batch + 3, max_len + 5), -1, dtype=torch.int64)
    used = 0
    for i in range(batch):
        n = int(seq_lens[i])
        req_to_token[rows[i], :n] = perm[used : used + n]
        used += n
    q = torch.randn(batch, heads, dim, generator=gen)
    return q, k_buffer, v_buffer, req_to_token, rows, seq_lens


def _on(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device) for t in tensors)


@pytest.mark.parametrize(
    "batch,kv_heads,group,dim", [(1, 1, 1, 64), (4, 2, 3, 64), (9, 1, 8, 128), (3, 3, 1, 128), (2, 1, 3, 128)]
)
@pytest.mark.parametrize("splits", [1, 4])
def test_decode_attention_matches_reference(batch, kv_heads, group, dim, splits, device):
    case = _case(batch, kv_heads, group, dim, seed=batch * 31 + group + dim + splits)
    scale = dim**-0.5
    expected = reference.decode_attention(*case, scale)
    q, kb, vb, r2t, rows, lens = _on(device, *case)
    out = torch.full_like(q, float("nan"))
    triton_decode.decode_attention(q, kb, vb, r2t, rows, lens, scale, num_kv_splits=splits, block_n=16, out=out)
    out = out.cpu()
    # Relative error per (request, head) vector: element-wise ratios of outputs near 0 only measure the
    # summation order of the online softmax.
    err = ((out - expected).norm(dim=-1) / expected.norm(dim=-1)).max().item()
    assert torch.isfinite(out).all() and err <= 1e-5, err


def test_one_token_contexts_and_more_splits_than_tokens(device):
    case = _case(5, 2, 3, 64, seed=5, max_len=3)
    expected = reference.decode_attention(*case, 0.125)
    out = triton_decode.decode_attention(*_on(device, *case), 0.125, num_kv_splits=16, block_n=16)
    assert out.device.type == device.type
    err = ((out.cpu() - expected).norm(dim=-1) / expected.norm(dim=-1)).max().item()
    assert err <= 1e-5, err


def test_decode_attention_rejects_bad_inputs(device):
    q, kb, vb, r2t, rows, lens = _on(device, *_case(2, 2, 2, 64, seed=1))
    with pytest.raises(ValueError, match="do not divide"):
        triton_decode.decode_attention(q[:, :3], kb, vb, r2t, rows, lens, 0.1)
    with pytest.raises(ValueError, match="req_to_token"):
        triton_decode.decode_attention(q, kb, vb, r2t.t(), rows, lens, 0.1)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 1e-3)])
def test_half_precision_inputs(dtype, tol, device):
    """bf16/fp16 q and pool: float32 softmax and sums, so the error is the output's rounding."""
    q, kb, vb, r2t, rows, lens = _case(4, 2, 3, 64, seed=3)
    q, kb, vb = q.to(dtype), kb.to(dtype), vb.to(dtype)
    expected = reference.decode_attention(q, kb, vb, r2t, rows, lens, 0.125).float()
    q, kb, vb, r2t, rows, lens = _on(device, q, kb, vb, r2t, rows, lens)
    out = torch.full_like(q, float("nan"))
    triton_decode.decode_attention(q, kb, vb, r2t, rows, lens, 0.125, num_kv_splits=4, block_n=16, out=out)
    assert out.dtype == dtype
    err = ((out.cpu().float() - expected).norm(dim=-1) / expected.norm(dim=-1)).max().item()
    assert err <= tol, err
