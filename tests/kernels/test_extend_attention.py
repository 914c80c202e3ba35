"""Extend (prefill) attention against the torch reference on the `device` fixture (the Triton interpreter
on CPU by default, see conftest.py): cached prefixes of 0..300 tokens, 1..64 new tokens, ragged batches
of 1..9 requests, GQA ratios 1, 3 and 8, head dims 64 and 128, scattered slots, slot-table rows out of
batch order, q as a strided view of a fused qkv projection, and NaN-poisoned outputs so unwritten
elements fail. Inputs come from seeded CPU generators; the reference runs on CPU."""

from __future__ import annotations

import pytest
import torch

from loomlm.kernels import extend_attention as triton_extend
from loomlm.kernels import reference


def _case(
    prefixes: list[int],
    extends: list[int],
    kv_heads: int,
    group: int,
    dim: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    index_dtype: torch.dtype = torch.int64,
):
    """(the arguments on CPU, for the reference; the same arguments on `device`, for the kernel)."""
    gen = torch.Generator().manual_seed(seed)
    batch, heads = len(prefixes), kv_heads * group
    seq_lens = [p + e for p, e in zip(prefixes, extends)]
    slots_total = sum(seq_lens) + 23
    k_buffer = torch.randn(slots_total, kv_heads, dim, generator=gen).to(dtype)
    v_buffer = torch.randn(slots_total, kv_heads, dim, generator=gen).to(dtype)
    perm = torch.randperm(slots_total, generator=gen)  # each request's slots scattered over the pool
    rows = torch.randperm(batch + 3, generator=gen)[:batch]
    # -1 past each sequence: reading an entry the kernel should not touch is out of bounds.
    req_to_token = torch.full((batch + 3, max(seq_lens) + 7), -1, dtype=index_dtype)
    used = 0
    for i, n in enumerate(seq_lens):
        req_to_token[rows[i], :n] = perm[used : used + n].to(index_dtype)
        used += n
    tokens = sum(extends)
    # q is the first H*D columns of a fused [T, (H + 2 KVH) * D] projection: row stride (H + 2 KVH) * D.
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    extend_lens = torch.tensor(extends, dtype=index_dtype)
    extend_starts = torch.cumsum(extend_lens, 0).to(index_dtype) - extend_lens
    prefix_lens = torch.tensor(prefixes, dtype=index_dtype)
    args = q, k_buffer, v_buffer, req_to_token, rows.to(index_dtype), prefix_lens, extend_lens, extend_starts
    # On the device q is the same strided view, of the moved projection.
    q_on_device = qkv.to(device)[:, : heads * dim].view(tokens, heads, dim)
    return args, (q_on_device,) + tuple(t.to(device) for t in args[1:])


def _err(out: torch.Tensor, expected: torch.Tensor) -> float:
    # Relative error per (token, head) vector: element-wise ratios of outputs near 0 only measure the
    # summation order of the online softmax.
    out, expected = out.cpu().float(), expected.cpu().float()
    return ((out - expected).norm(dim=-1) / expected.norm(dim=-1)).max().item()


def _run(args, scale: float, max_extend: int, **kwargs) -> torch.Tensor:
    out = torch.full(args[0].shape, float("nan"), dtype=args[0].dtype, device=args[0].device)
    result = triton_extend.extend_attention(*args, scale, max_extend, out=out, **kwargs)
    assert result is out
    return out


_gen = torch.Generator().manual_seed(2024)
_RAGGED_PREFIXES = [0] + torch.randint(0, 301, (8,), generator=_gen).tolist()
_RAGGED_EXTENDS = [9, 1] + torch.randint(1, 65, (7,), generator=_gen).tolist()

CASES = [  # prefixes, extends, kv_heads, group, dim, index dtype
    ([0], [1], 1, 1, 64, torch.int64),
    ([0], [64], 2, 3, 64, torch.int32),
    ([300, 0, 45, 1], [17, 64, 1, 33], 2, 3, 64, torch.int64),
    ([130, 0, 7], [64, 1, 20], 3, 1, 128, torch.int32),
    ([17, 299], [5, 64], 1, 8, 128, torch.int64),
    (_RAGGED_PREFIXES, _RAGGED_EXTENDS, 1, 8, 64, torch.int64),
]


@pytest.mark.parametrize("prefixes,extends,kv_heads,group,dim,index_dtype", CASES)
@pytest.mark.parametrize("block_m,block_n", [(16, 16), (None, 64)])
def test_extend_attention_matches_reference(
    prefixes, extends, kv_heads, group, dim, index_dtype, block_m, block_n, device
):
    args, on_device = _case(
        prefixes,
        extends,
        kv_heads,
        group,
        dim,
        seed=sum(prefixes) + len(extends) + dim,
        device=device,
        index_dtype=index_dtype,
    )
    assert on_device[0].stride() == args[0].stride()
    scale = dim**-0.5
    expected = reference.extend_attention(*args, scale)
    out = _run(on_device, scale, max(extends), block_m=block_m, block_n=block_n)
    err = _err(out, expected)
    assert torch.isfinite(out).all() and err <= 1e-5, err


def test_extend_attention_bfloat16(device):
    args, on_device = _case([0, 150, 33], [40, 9, 64], 2, 3, 64, seed=7, device=device, dtype=torch.bfloat16)
    expected = reference.extend_attention(*args, 0.125)
    out = _run(on_device, 0.125, 64, block_m=16, block_n=32)
    assert out.dtype == torch.bfloat16
    err = _err(out, expected)
    assert torch.isfinite(out).all() and err <= 2e-2, err


def test_no_prefix_matches_torch_causal_sdpa(device):
    kv_heads, group, dim, extend = 2, 3, 64, 45
    args, on_device = _case([0], [extend], kv_heads, group, dim, seed=11, device=device)
    q, kb, vb, r2t, rows = args[:5]
    slots = r2t[rows[0], :extend]
    k = kb[slots].repeat_interleave(group, dim=1).transpose(0, 1)  # [H, T, D]
    v = vb[slots].repeat_interleave(group, dim=1).transpose(0, 1)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, is_causal=True, scale=dim**-0.5
    ).transpose(0, 1)
    out = _run(on_device, dim**-0.5, extend, block_m=16, block_n=16)
    assert _err(out, expected) <= 1e-5


def test_grid_larger_than_batch_and_strided_out(device):
    """max_extend above every extend_len (programs past a request's tokens exit), a strided `out`."""
    args, on_device = _case([5, 70], [3, 20], 1, 3, 64, seed=3, device=device)
    expected = reference.extend_attention(*args, 0.1)
    q = on_device[0]
    storage = torch.full((q.shape[0], q.shape[1], q.shape[2] + 8), float("nan"), device=device)
    out = storage[..., : q.shape[2]]
    triton_extend.extend_attention(*on_device, 0.1, 100, out=out, block_m=16, block_n=16)
    assert _err(out, expected) <= 1e-5
    assert storage[..., q.shape[2] :].isnan().all()  # nothing written outside the view
    default = triton_extend.extend_attention(*on_device, 0.1, 100)
    assert default.is_contiguous() and _err(default, expected) <= 1e-5


def test_extend_attention_rejects_bad_inputs(device):
    q, kb, vb, r2t, rows, prefix, ext, starts = _case([4, 9], [3, 5], 2, 2, 64, seed=1, device=device)[1]

    def call(**changes):
        kwargs = dict(
            q=q,
            k_buffer=kb,
            v_buffer=vb,
            req_to_token=r2t,
            req_rows=rows,
            prefix_lens=prefix,
            extend_lens=ext,
            extend_starts=starts,
            scale=0.1,
            max_extend=5,
        )
        kwargs.update(changes)
        return triton_extend.extend_attention(**kwargs)

    with pytest.raises(ValueError, match="do not divide"):
        call(q=q[:, :3])
    with pytest.raises(ValueError, match="q must be"):
        call(q=q[0])
    with pytest.raises(ValueError, match="k/v buffers"):
        call(k_buffer=kb[:, :, :32])
    with pytest.raises(ValueError, match="k/v buffers must have q's dtype"):
        call(k_buffer=kb.half())
    with pytest.raises(ValueError, match="prefix_lens"):
        call(prefix_lens=prefix.float())
    with pytest.raises(ValueError, match="extend_starts"):
        call(extend_starts=starts[:1])
    with pytest.raises(ValueError, match="req_rows"):
        call(req_rows=rows.view(2, 1))
    with pytest.raises(ValueError, match="req_to_token"):
        call(req_to_token=r2t.t())
    with pytest.raises(ValueError, match="req_to_token"):
        call(req_to_token=r2t.float())
    with pytest.raises(ValueError, match="max_extend"):
        call(max_extend=0)
    with pytest.raises(ValueError, match="block_n"):
        call(block_n=8)
    with pytest.raises(ValueError, match="out must be"):
        call(out=torch.empty(q.shape, dtype=torch.float16, device=device))
