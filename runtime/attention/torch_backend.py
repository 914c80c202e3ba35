"""Pure-torch attention over the slot pool: gather each request's K/V by slot, then padded SDPA.

Extend: every request's queries are laid out in a padded [B, E, H, D] block (E = longest extend) and
its keys in [B, L, KVH, D] (L = longest sequence); a boolean mask removes padding and enforces causality
(query at position p sees keys at positions <= p), and SDPA (flash attention on CPU) does the rest.

Decode (one query per request) uses two batched matmuls with query heads grouped per KV head instead:
on CPU that is several times faster than SDPA for bfloat16 at batch > 1, and its [B, H, L] scores are
small. Scores and softmax are float32 whatever the KV dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loomlm.runtime.attention.base import AttentionBackend
from loomlm.runtime.forward_context import ForwardContext


@dataclass
class TorchAttentionMetadata:
    kv_index: torch.Tensor      # [B, L] int64 slots (padding -> scratch slot)
    mask: torch.Tensor | None        # [B, 1, E, L] bool, True = attend (extend only)
    q_scatter: torch.Tensor | None   # [T] int64, flat index b * E + e of each token (extend only)
    max_extend: int
    decode_bias: torch.Tensor | None  # [B, 1, 1, L] float32, 0 or -inf (decode only)


class TorchAttentionBackend(AttentionBackend):
    def __init__(self, scale: float):
        self.scale = scale

    def prepare(self, ctx: ForwardContext) -> None:
        device = ctx.input_ids.device
        prefix = ctx.prefix_lens.to(device)
        extend = ctx.extend_lens.to(device)
        B = ctx.batch_size
        E = int(ctx.extend_lens.max())
        L = int((ctx.prefix_lens + ctx.extend_lens).max())
        key_pos = torch.arange(L, device=device)
        key_valid = key_pos[None, :] < (prefix + extend)[:, None]                # [B, L]
        table = ctx.req_to_token_pool.req_to_token[ctx.req_rows.to(device), :L].to(torch.int64)
        kv_index = torch.where(key_valid, table, ctx.kv_pool.scratch_slot)
        if E == 1 and ctx.num_tokens == B:   # decode: padding is the only thing to mask
            bias = torch.zeros((B, 1, 1, L), dtype=torch.float32, device=device)
            bias.masked_fill_(~key_valid[:, None, None, :], float("-inf"))
            ctx.attn_metadata = TorchAttentionMetadata(kv_index, None, None, 1, bias)
            return
        q_off = torch.arange(E, device=device)
        q_valid = q_off[None, :] < extend[:, None]                               # [B, E]
        q_pos = prefix[:, None] + q_off[None, :]                                 # [B, E]
        mask = key_valid[:, None, :] & (key_pos[None, None, :] <= q_pos[:, :, None])
        # Padded query rows would see no key at all (NaN softmax): let them see key 0; they are dropped.
        mask[:, :, 0] |= ~q_valid
        starts = torch.cumsum(extend, 0) - extend
        tok_req = torch.repeat_interleave(torch.arange(B, device=device), extend)
        tok_off = torch.arange(ctx.num_tokens, device=device) - starts[tok_req]
        ctx.attn_metadata = TorchAttentionMetadata(kv_index, mask[:, None], tok_req * E + tok_off, E, None)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                ctx: ForwardContext) -> torch.Tensor:
        md: TorchAttentionMetadata = ctx.attn_metadata
        pool = ctx.kv_pool
        k_buf, v_buf = pool.k_buffers[layer_id], pool.v_buffers[layer_id]
        k_buf.index_copy_(0, ctx.out_slots, k.to(k_buf.dtype))
        v_buf.index_copy_(0, ctx.out_slots, v.to(v_buf.dtype))
        B, L = md.kv_index.shape
        T, H, D = q.shape
        flat = md.kv_index.view(-1)
        keys = k_buf.index_select(0, flat).view(B, L, -1, D).to(q.dtype).transpose(1, 2)   # [B, KVH, L, D]
        values = v_buf.index_select(0, flat).view(B, L, -1, D).to(q.dtype).transpose(1, 2)
        if md.decode_bias is not None:
            return self._decode(q, keys, values, md.decode_bias)
        E = md.max_extend
        q_pad = q.new_zeros((B * E, H, D))
        q_pad[md.q_scatter] = q
        out = F.scaled_dot_product_attention(
            q_pad.view(B, E, H, D).transpose(1, 2), keys, values, attn_mask=md.mask, scale=self.scale,
            enable_gqa=H != keys.shape[1])                                       # [B, H, E, D]
        return out.transpose(1, 2).reshape(B * E, H, D)[md.q_scatter]

    def _decode(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        """q [B, H, D]; keys/values [B, KVH, L, D]; bias [B, 1, 1, L] -> [B, H, D]."""
        B, H, D = q.shape
        KVH = keys.shape[1]
        q_grouped = q.view(B, KVH, H // KVH, D)              # query heads sharing a KV head, together
        scores = torch.matmul(q_grouped, keys.transpose(-1, -2)).float()               # [B, KVH, G, L]
        probs = torch.softmax(scores.mul_(self.scale).add_(bias), dim=-1).to(values.dtype)
        return torch.matmul(probs, values).reshape(B, H, D)
