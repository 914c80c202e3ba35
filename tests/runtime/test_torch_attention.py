"""The torch attention backend: extend attention over mixed extend lengths (several padding buckets)
equals a per-request float64 reference; decode attention with shared prefixes (read once per group,
merged by log-sum-exp) equals the plain per-request decode attention, and the engine uses it when decode
requests share a cached prefix."""

from __future__ import annotations

import random

import pytest
import torch

from loomlm.runtime.attention.torch_backend import TorchAttentionBackend
from loomlm.runtime.forward_context import ForwardBatch, ForwardContext, ForwardMode, SharedPrefix
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool


@pytest.mark.parametrize("extend_lens", [[100, 3, 40, 7, 1, 64], [5, 5, 5], [1, 30]])
def test_extend_attention_matches_reference(extend_lens):
    gen = torch.Generator().manual_seed(len(extend_lens))
    KVH, G, D, H = 2, 2, 8, 4
    prefix_lens = [(7 * i) % 50 for i in range(len(extend_lens))]
    total = sum(p + e for p, e in zip(prefix_lens, extend_lens))
    pool = KVPool(total, 1, KVH, D, torch.float32, "cpu")
    table = ReqToTokenPool(len(extend_lens), 256, "cpu")
    perm = torch.randperm(total, generator=gen)
    pool.k_buffers[0][:total] = torch.randn(total, KVH, D, generator=gen)
    pool.v_buffers[0][:total] = torch.randn(total, KVH, D, generator=gen)
    used = 0
    out_slots = []
    for row, (p, e) in enumerate(zip(prefix_lens, extend_lens)):
        slots = perm[used : used + p + e]
        used += p + e
        table.req_to_token[row, : p + e] = slots.to(torch.int32)
        out_slots.append(slots[p:])
    T = sum(extend_lens)
    q = torch.randn(T, H, D, generator=gen)
    k = torch.randn(T, KVH, D, generator=gen)
    v = torch.randn(T, KVH, D, generator=gen)
    B = len(extend_lens)
    backend = TorchAttentionBackend(D**-0.5)
    batch = ForwardBatch(
        ForwardMode.EXTEND,
        torch.zeros(T, dtype=torch.int64),
        torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, extend_lens)]),
        torch.cat(out_slots),
        torch.arange(B),
        torch.tensor(prefix_lens),
        torch.tensor(extend_lens),
        torch.arange(T),
    )
    ctx = ForwardContext(batch, pool, table, backend)
    backend.prepare(ctx)
    if max(extend_lens) >= 4 * min(extend_lens):
        assert len(ctx.attn_metadata.buckets) > 1
    got = backend.forward(q, k, v, 0, ctx)
    offset = 0
    for row, (p, e) in enumerate(zip(prefix_lens, extend_lens)):
        slots = table.req_to_token[row, : p + e].long()
        keys = pool.k_buffers[0][slots].double().repeat_interleave(G, dim=1)  # [p+e, H, D]
        vals = pool.v_buffers[0][slots].double().repeat_interleave(G, dim=1)
        qr = q[offset : offset + e].double()  # [e, H, D]
        scores = torch.einsum("qhd,khd->hqk", qr, keys) * D**-0.5
        causal = torch.arange(p + e)[None, :] <= (p + torch.arange(e))[:, None]
        scores = scores.masked_fill(~causal[None], float("-inf"))
        want = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vals)
        assert torch.allclose(got[offset : offset + e].double(), want, atol=1e-5), row
        offset += e


def decode_outputs(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random decode batch: two groups sharing prefixes of 40 and 25 tokens, and loners."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    KVH, G, D, slots_total = 2, 3, 16, 2000
    pool = KVPool(slots_total, 1, KVH, D, dtype, "cpu")
    pool.k_buffers[0][:slots_total] = torch.randn(slots_total, KVH, D, generator=gen).to(dtype)
    pool.v_buffers[0][:slots_total] = torch.randn(slots_total, KVH, D, generator=gen).to(dtype)
    free = list(range(slots_total))
    rng.shuffle(free)
    prefixes = [torch.tensor([free.pop() for _ in range(n)]) for n in (40, 25)]
    member_of = [0, 1, 0, None, 1, 0, None]
    table = ReqToTokenPool(len(member_of), 200, "cpu")
    lens = []
    for row, group in enumerate(member_of):
        head = prefixes[group] if group is not None else torch.zeros(0, dtype=torch.int64)
        own = torch.tensor([free.pop() for _ in range(rng.randrange(1, 30))])
        full = torch.cat([head, own])
        table.req_to_token[row, : full.numel()] = full.to(torch.int32)
        lens.append(full.numel())
    B = len(lens)
    kv = torch.tensor(lens) - 1  # the last token of each row is the one being decoded
    q = torch.randn(B, KVH * G, D, generator=gen).to(dtype)
    k = torch.randn(B, KVH, D, generator=gen).to(dtype)
    v = torch.randn(B, KVH, D, generator=gen).to(dtype)
    groups = tuple(
        SharedPrefix(p, torch.tensor([i for i, g in enumerate(member_of) if g == n])) for n, p in enumerate(prefixes)
    )
    backend = TorchAttentionBackend(D**-0.5)
    out = []
    for shared in ((), groups):
        batch = ForwardBatch(
            ForwardMode.DECODE,
            torch.zeros(B, dtype=torch.int64),
            kv,
            table.req_to_token[torch.arange(B), kv].to(torch.int64),
            torch.arange(B),
            kv,
            torch.ones(B, dtype=torch.int64),
            torch.arange(B),
            shared_prefixes=shared,
        )
        ctx = ForwardContext(batch, pool, table, backend)
        backend.prepare(ctx)
        out.append(backend.forward(q, k, v, 0, ctx).float())
    return out[0], out[1]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_shared_prefix_decode_equals_plain_decode(dtype, tol, seed):
    plain, shared = decode_outputs(dtype, seed)
    assert torch.allclose(plain, shared, atol=tol, rtol=0), (plain - shared).abs().max()


def test_engine_reads_shared_prefixes_once(engine):
    rng = random.Random(5)
    prefix = [rng.randrange(100, 40000) for _ in range(120)]
    prompts = [prefix + [rng.randrange(100, 40000) for _ in range(8)] for _ in range(4)]
    params = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    before = engine.get_stats()
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    saved = engine.get_stats()["shared_prefix_reads_saved"] - before["shared_prefix_reads_saved"]
    # 4 requests decoding together over one 120-token prefix: at least 3 x 120 reads saved per layer pass.
    assert saved >= 3 * 120
    alone = [engine.generate(input_ids=p, sampling_params=params, cache_salt="alone")["output_ids"] for p in prompts]
    assert [o["output_ids"] for o in outs] == alone
    engine.idle_integrity()


def _shared_decode_ops(num_groups: int) -> int:
    """torch calls made by one decode layer whose batch is `num_groups` two-member groups."""
    from torch.overrides import TorchFunctionMode

    KVH, G, D, P, B = 2, 3, 16, 40, 2 * num_groups
    pool = KVPool(num_groups * P + 2 * B + 1, 1, KVH, D, torch.float32, "cpu")
    table = ReqToTokenPool(B, 64, "cpu")
    groups, used = [], 0
    for g in range(num_groups):
        prefix = torch.arange(used, used + P)
        used += P
        for m in range(2):
            table.req_to_token[2 * g + m, : P + 2] = torch.cat([prefix, torch.arange(used, used + 2)]).int()
            used += 2
        groups.append(SharedPrefix(prefix, torch.tensor([2 * g, 2 * g + 1])))
    kv = torch.full((B,), P + 1)
    batch = ForwardBatch(
        ForwardMode.DECODE,
        torch.zeros(B, dtype=torch.int64),
        kv,
        table.req_to_token[torch.arange(B), kv].long(),
        torch.arange(B),
        kv,
        torch.ones(B, dtype=torch.int64),
        torch.arange(B),
        shared_prefixes=tuple(groups),
    )
    backend = TorchAttentionBackend(D**-0.5)
    ctx = ForwardContext(batch, pool, table, backend)
    backend.prepare(ctx)
    q, k, v = torch.randn(B, KVH * G, D), torch.randn(B, KVH, D), torch.randn(B, KVH, D)

    class Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    with Count():
        backend.forward(q, k, v, 0, ctx)
    return Count.calls


def test_shared_prefix_decode_does_not_grow_with_the_number_of_groups():
    # A loop over groups made tree-of-thought batches (dozens of two-member groups) slower than no sharing.
    assert _shared_decode_ops(3) == _shared_decode_ops(12)  # 6 and 24 requests: both past the float32 path
