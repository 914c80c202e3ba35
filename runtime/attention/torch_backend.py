"""Pure-torch attention over the slot pool: gather each request's K/V by slot, then padded SDPA.

Extend: requests are bucketed by extend length (within a factor of 2); in each bucket every request's
queries are laid out in a padded [b, E, H, D] block (E = longest extend in the bucket) and its keys in
[b, L, KVH, D] (L = longest sequence); a boolean mask removes padding and enforces causality (query at
position p sees keys at positions <= p), and SDPA (flash attention on CPU) does the rest.

Decode (one query per request) uses two batched matmuls with query heads grouped per KV head instead:
on CPU that is several times faster than SDPA for bfloat16 at batch > 1, and its [B, H, L] scores are
small. Scores and softmax are float32 whatever the KV dtype.

Decode requests that share a cached prefix (`ctx.batch.shared_prefixes`, from the radix tree) read those
keys once per group rather than once per request: each member attends to its own keys past the prefix
in the batched pass, the group attends to the prefix in one matmul, and the two partial softmaxes are
merged with their maxima and sums (the log-sum-exp merge of cascade attention). Gathering K/V is what
costs most on CPU, so this turns a batch of 16 requests over one 1,000-token prefix from 16 gathers of
the prefix into one. All groups go through one padded pass ([groups, longest prefix] keys, [groups,
largest group] queries), so the op count per layer does not grow with the number of groups: a
tree-of-thought batch has dozens of two-member groups, which a loop over groups made twice as slow per
decode step as no sharing at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loomlm.runtime.attention.base import AttentionBackend
from loomlm.runtime.forward_context import ForwardContext


@dataclass
class ExtendBucket:
    """Requests of similar extend length, attended in one padded SDPA call."""

    kv_index: torch.Tensor  # [b, L] int64 slots (padding -> scratch slot)
    mask: torch.Tensor  # [b, 1, E, L] bool, True = attend
    q_scatter: torch.Tensor  # [t] int64, flat index i * E + e of each of the bucket's tokens
    tokens: torch.Tensor | None  # [t] int64, the bucket's tokens in the forward (None: all, in order)
    max_extend: int


@dataclass
class SharedPrefixBlock:
    """Every shared-prefix group of a decode batch, padded into one block (built once per forward)."""

    slots: torch.Tensor  # [NG, P] int64: each group's prefix slots (padding -> scratch slot)
    bias: torch.Tensor  # [NG, 1, 1, P] float32: 0, or -inf on padding
    members: torch.Tensor  # [NG * M] int64: batch index of each group's members (padding -> 0)
    valid: torch.Tensor  # [Nm] int64: positions in [NG * M] of real members
    member_rows: torch.Tensor  # [Nm] int64: their batch indices (members[valid])
    max_members: int  # M


@dataclass
class TorchAttentionMetadata:
    buckets: list[ExtendBucket]  # extend only
    kv_index: torch.Tensor | None = None  # decode: [B, L] int64 slots of each request's own keys
    decode_bias: torch.Tensor | None = None  # decode: [B, 1, 1, L] float32, 0 or -inf
    shared: SharedPrefixBlock | None = None  # decode: ctx.batch.shared_prefixes, padded


def _shared_block(groups: tuple, scratch: int, device: torch.device) -> SharedPrefixBlock | None:
    if not groups:
        return None
    pad = torch.nn.utils.rnn.pad_sequence
    slots = pad([g.slots.to(device) for g in groups], batch_first=True, padding_value=-1)  # [NG, P]
    bias = torch.zeros(slots.shape, dtype=torch.float32, device=device)
    bias.masked_fill_(slots < 0, float("-inf"))
    members = pad([g.members.to(device) for g in groups], batch_first=True, padding_value=-1).view(-1)
    valid = torch.nonzero(members >= 0).view(-1)
    return SharedPrefixBlock(
        slots.masked_fill(slots < 0, scratch),
        bias[:, None, None, :],
        members.clamp(min=0),
        valid,
        members[valid],
        max(g.members.numel() for g in groups),
    )


# Requests whose extend is under half of the longest in their bucket start a new bucket, so padding
# never more than doubles the attention work (one 960-token chunk beside sixteen 64-token suffixes
# would otherwise pad all seventeen to 960 queries).
BUCKET_RATIO = 2
# CPU decode batches up to this size compute attention in float32 whatever the KV dtype (see forward).
FLOAT32_DECODE_MAX_BATCH = 4


class TorchAttentionBackend(AttentionBackend):
    def __init__(self, scale: float):
        self.scale = scale

    def prepare(self, ctx: ForwardContext) -> None:
        B = ctx.batch.batch_size
        if int(ctx.batch.extend_lens.max()) == 1 and ctx.batch.num_tokens == B:
            self._prepare_decode(ctx)
            return
        lens = ctx.batch.extend_lens.tolist()
        order = sorted(range(B), key=lambda i: -lens[i])
        groups: list[list[int]] = [[]]
        for i in order:
            if groups[-1] and lens[i] * BUCKET_RATIO < lens[groups[-1][0]]:
                groups.append([])
            groups[-1].append(i)
        if len(groups) == 1:
            buckets = [self._bucket(ctx, None)]
        else:
            buckets = [self._bucket(ctx, torch.tensor(sorted(g), dtype=torch.int64)) for g in groups]
        ctx.attn_metadata = TorchAttentionMetadata(buckets)

    def _bucket(self, ctx: ForwardContext, idx: torch.Tensor | None) -> ExtendBucket:
        """Padded-SDPA metadata for the requests `idx` of the batch (None: all of them)."""
        device = ctx.batch.input_ids.device
        prefix_cpu, extend_cpu, rows = ctx.batch.prefix_lens, ctx.batch.extend_lens, ctx.batch.req_rows
        if idx is not None:
            prefix_cpu, extend_cpu, rows = prefix_cpu[idx], extend_cpu[idx], rows[idx]
        prefix, extend = prefix_cpu.to(device), extend_cpu.to(device)
        b = int(extend_cpu.numel())
        E = int(extend_cpu.max())
        L = int((prefix_cpu + extend_cpu).max())
        key_pos = torch.arange(L, device=device)
        key_valid = key_pos[None, :] < (prefix + extend)[:, None]  # [b, L]
        table = ctx.req_to_token_pool.req_to_token[rows.to(device), :L].to(torch.int64)
        kv_index = torch.where(key_valid, table, ctx.kv_pool.scratch_slot)
        q_off = torch.arange(E, device=device)
        q_valid = q_off[None, :] < extend[:, None]  # [b, E]
        q_pos = prefix[:, None] + q_off[None, :]  # [b, E]
        mask = key_valid[:, None, :] & (key_pos[None, None, :] <= q_pos[:, :, None])
        # Padded query rows would see no key at all (NaN softmax): let them see key 0; they are dropped.
        mask[:, :, 0] |= ~q_valid
        starts = torch.cumsum(extend, 0) - extend
        tok_req = torch.repeat_interleave(torch.arange(b, device=device), extend)
        tok_off = torch.arange(tok_req.numel(), device=device) - starts[tok_req]
        tokens = None
        if idx is not None:
            all_ext = ctx.batch.extend_lens.to(device)
            global_starts = (torch.cumsum(all_ext, 0) - all_ext)[idx.to(device)]
            tokens = global_starts[tok_req] + tok_off
        return ExtendBucket(kv_index, mask[:, None], tok_req * E + tok_off, tokens, E)

    def _prepare_decode(self, ctx: ForwardContext) -> None:
        """Each request's own keys: positions start .. seq_len-1, where start is its group's prefix
        length (0 outside groups). Padding points at the scratch slot and is masked by the bias."""
        device = ctx.batch.input_ids.device
        B = ctx.batch.batch_size
        seq = (ctx.batch.prefix_lens + ctx.batch.extend_lens).to(device)  # [B]
        starts = torch.zeros(B, dtype=torch.int64, device=device)
        for group in ctx.batch.shared_prefixes:
            starts[group.members] = group.slots.numel()
        own = seq - starts
        L = int(own.max())
        offs = torch.arange(L, device=device)
        key_valid = offs[None, :] < own[:, None]  # [B, L]
        table = ctx.req_to_token_pool.req_to_token[ctx.batch.req_rows.to(device)]  # [B, max_context]
        pos = (starts[:, None] + offs[None, :]).clamp_(max=table.shape[1] - 1)
        kv_index = torch.where(key_valid, torch.gather(table, 1, pos).to(torch.int64), ctx.kv_pool.scratch_slot)
        bias = torch.zeros((B, 1, 1, L), dtype=torch.float32, device=device)
        bias.masked_fill_(~key_valid[:, None, None, :], float("-inf"))
        block = _shared_block(ctx.batch.shared_prefixes, ctx.kv_pool.scratch_slot, device)
        ctx.attn_metadata = TorchAttentionMetadata([], kv_index, bias, block)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, ctx: ForwardContext
    ) -> torch.Tensor:
        md: TorchAttentionMetadata = ctx.attn_metadata
        pool = ctx.kv_pool
        k_buf, v_buf = pool.k_buffers[layer_id], pool.v_buffers[layer_id]
        k_buf.index_copy_(0, ctx.batch.out_slots, k.to(k_buf.dtype))
        v_buf.index_copy_(0, ctx.batch.out_slots, v.to(v_buf.dtype))
        if md.decode_bias is not None:
            # On CPU, at a few requests the decode matmuls are tiny and float32 ones run about twice as
            # fast as bfloat16 ones; at 32 requests bfloat16 is faster (2-core AMD EPYC, bench offline).
            small = q.device.type == "cpu" and q.shape[0] <= FLOAT32_DECODE_MAX_BATCH
            compute = torch.float32 if small else q.dtype
            keys, values = self._gather(k_buf, v_buf, md.kv_index, compute)
            qc = q.to(compute)
            if md.shared is not None:
                out = self._decode_shared(qc, keys, values, md.decode_bias, md.shared, k_buf, v_buf)
            else:
                out = self._decode(qc, keys, values, md.decode_bias)
            return out.to(q.dtype)
        if len(md.buckets) == 1 and md.buckets[0].tokens is None:
            return self._extend(q, md.buckets[0], k_buf, v_buf)
        out = torch.empty_like(q)
        for bucket in md.buckets:
            out[bucket.tokens] = self._extend(q[bucket.tokens], bucket, k_buf, v_buf)
        return out

    @staticmethod
    def _gather(
        k_buf: torch.Tensor, v_buf: torch.Tensor, kv_index: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the slots kv_index [B, L] -> two [B, KVH, L, D] tensors."""
        B, L = kv_index.shape
        flat = kv_index.view(-1)
        D = k_buf.shape[-1]
        keys = k_buf.index_select(0, flat).view(B, L, -1, D).to(dtype).transpose(1, 2)
        values = v_buf.index_select(0, flat).view(B, L, -1, D).to(dtype).transpose(1, 2)
        return keys, values

    def _extend(self, q: torch.Tensor, bucket: ExtendBucket, k_buf: torch.Tensor, v_buf: torch.Tensor) -> torch.Tensor:
        """q [t, H, D], the bucket's tokens -> [t, H, D]."""
        keys, values = self._gather(k_buf, v_buf, bucket.kv_index, q.dtype)
        B = bucket.kv_index.shape[0]
        _, H, D = q.shape
        E = bucket.max_extend
        q_pad = q.new_zeros((B * E, H, D))
        q_pad[bucket.q_scatter] = q
        out = F.scaled_dot_product_attention(
            q_pad.view(B, E, H, D).transpose(1, 2),
            keys,
            values,
            attn_mask=bucket.mask,
            scale=self.scale,
            enable_gqa=H != keys.shape[1],
        )  # [B, H, E, D]
        return out.transpose(1, 2).reshape(B * E, H, D)[bucket.q_scatter]

    def _decode(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """q [B, H, D]; keys/values [B, KVH, L, D]; bias [B, 1, 1, L] -> [B, H, D]."""
        B, H, D = q.shape
        KVH = keys.shape[1]
        q_grouped = q.view(B, KVH, H // KVH, D)  # query heads sharing a KV head, together
        scores = torch.matmul(q_grouped, keys.transpose(-1, -2)).float()  # [B, KVH, G, L]
        probs = torch.softmax(scores.mul_(self.scale).add_(bias), dim=-1).to(values.dtype)
        return torch.matmul(probs, values).reshape(B, H, D)

    def _decode_shared(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor,
        block: SharedPrefixBlock,
        k_buf: torch.Tensor,
        v_buf: torch.Tensor,
    ) -> torch.Tensor:
        """Decode with shared prefixes: softmax over [group prefix keys] + [own keys], merged exactly."""
        B, H, D = q.shape
        KVH = keys.shape[1]
        G = H // KVH
        q_grouped = q.view(B, KVH, G, D)
        scores = torch.matmul(q_grouped, keys.transpose(-1, -2)).float().mul_(self.scale).add_(bias)
        m_own = scores.amax(-1, keepdim=True)  # [B, KVH, G, 1], finite: the new token is always own
        p_own = torch.exp(scores - m_own)
        den = p_own.sum(-1, keepdim=True)  # [B, KVH, G, 1]
        out = torch.matmul(p_own.to(values.dtype), values).float()  # [B, KVH, G, D]

        NG, P = block.slots.shape
        M = block.max_members
        flat = block.slots.view(-1)
        pk = k_buf.index_select(0, flat).view(NG, P, KVH, D).to(q.dtype).permute(0, 2, 3, 1)  # [NG, KVH, D, P]
        pv = v_buf.index_select(0, flat).view(NG, P, KVH, D).to(q.dtype).transpose(1, 2)  # [NG, KVH, P, D]
        qm = q_grouped.index_select(0, block.members).view(NG, M, KVH, G, D)
        qm = qm.permute(0, 2, 1, 3, 4).reshape(NG, KVH, M * G, D)
        s = torch.matmul(qm, pk).float().mul_(self.scale).add_(block.bias)  # [NG, KVH, M*G, P]
        m_pre = s.amax(-1, keepdim=True)
        p_pre = torch.exp(s - m_pre)
        den_pre = p_pre.sum(-1, keepdim=True)
        o_pre = torch.matmul(p_pre.to(pv.dtype), pv).float()  # [NG, KVH, M*G, D]

        def per_member(t: torch.Tensor) -> torch.Tensor:  # [NG, KVH, M*G, X] -> [Nm, KVH, G, X]
            t = t.view(NG, KVH, M, G, -1).permute(0, 2, 1, 3, 4).reshape(NG * M, KVH, G, -1)
            return t.index_select(0, block.valid)

        m_pre, den_pre, o_pre = per_member(m_pre), per_member(den_pre), per_member(o_pre)
        idx = block.member_rows
        m_o = m_own.index_select(0, idx)
        m = torch.maximum(m_o, m_pre)
        a = torch.exp(m_o - m)
        b = torch.exp(m_pre - m)
        out.index_copy_(0, idx, a * out.index_select(0, idx) + b * o_pre)
        den.index_copy_(0, idx, a * den.index_select(0, idx) + b * den_pre)
        return (out / den).to(q.dtype).reshape(B, H, D)
