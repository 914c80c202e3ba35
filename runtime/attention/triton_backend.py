"""Triton attention over the slot pool: the KV store, split-KV decode and ragged extend kernels.

`prepare` turns the forward's CPU-side lengths into the few device tensors the kernels read (one copy
each, no device -> host sync); `forward` stores the layer's new K/V into their slots and runs the decode
kernel (one query per request) or the extend kernel (new tokens over their cached prefix, causally over
themselves). The kernels read every key through `req_to_token`, so requests sharing a cached prefix need
nothing special here (`ctx.batch.shared_prefixes` is a torch-backend optimisation and is ignored).

`decode_metadata` builds the decode metadata from caller-owned device tensors: the CUDA-graph runner
passes its static buffers, so a captured decode step reads each replay's rows and lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loomlm.runtime.attention.base import AttentionBackend
from loomlm.runtime.forward_context import ForwardContext

# The interpreter on CPU: a pretend GPU of a few SMs keeps the tests' split counts small.
INTERPRETER_SMS = 4


@dataclass
class TritonDecodeMetadata:
    req_rows: torch.Tensor  # [B] int64, rows of req_to_token
    seq_lens: torch.Tensor  # [B] int32, keys per request (the new token included)
    num_kv_splits: int


@dataclass
class TritonExtendMetadata:
    req_rows: torch.Tensor  # [B] int64
    prefix_lens: torch.Tensor  # [B] int32, cached tokens before the new ones
    extend_lens: torch.Tensor  # [B] int32, new tokens
    extend_starts: torch.Tensor  # [B] int32, index of each request's first new token in the forward
    max_extend: int  # host-side maximum of extend_lens (sizes the grid)


class TritonAttentionBackend(AttentionBackend):
    def __init__(self, scale: float):
        from loomlm.kernels import attention_block, decode_attention, extend_attention, rope_kv  # triton

        self.scale = scale
        self._splits = decode_attention.default_num_kv_splits
        self._sms = (
            torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
            if torch.cuda.is_available() and not attention_block.interpreted()
            else INTERPRETER_SMS
        )
        self._decode = decode_attention.decode_attention
        self._extend = extend_attention.extend_attention
        self._store = rope_kv.store_kv_

    def decode_metadata(self, req_rows: torch.Tensor, seq_lens: torch.Tensor, kv_heads: int) -> TritonDecodeMetadata:
        splits = self._splits(int(req_rows.numel()), kv_heads, self._sms)
        return TritonDecodeMetadata(req_rows, seq_lens, splits)

    def prepare(self, ctx: ForwardContext) -> None:
        device = ctx.batch.input_ids.device
        prefix, extend = ctx.batch.prefix_lens, ctx.batch.extend_lens  # CPU [B]
        rows = ctx.batch.req_rows.to(device, non_blocking=True)
        kv_heads = ctx.kv_pool.k_buffers[0].shape[1]
        if ctx.batch.num_tokens == ctx.batch.batch_size:  # one new token each: decode (seq = prefix + itself)
            seq = (prefix + 1).to(torch.int32).to(device, non_blocking=True)
            ctx.attn_metadata = self.decode_metadata(rows, seq, kv_heads)
            return
        starts = torch.cumsum(extend, 0) - extend
        packed = torch.stack((prefix, extend, starts)).to(torch.int32).to(device, non_blocking=True)
        ctx.attn_metadata = TritonExtendMetadata(rows, packed[0], packed[1], packed[2], int(extend.max()))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, ctx: ForwardContext
    ) -> torch.Tensor:
        pool = ctx.kv_pool
        k_buf, v_buf = pool.k_buffers[layer_id], pool.v_buffers[layer_id]
        self._store(k_buf, v_buf, k, v, ctx.batch.out_slots)
        md = ctx.attn_metadata
        table = ctx.req_to_token_pool.req_to_token
        if isinstance(md, TritonDecodeMetadata):
            return self._decode(
                q, k_buf, v_buf, table, md.req_rows, md.seq_lens, self.scale, num_kv_splits=md.num_kv_splits
            )
        return self._extend(
            q,
            k_buf,
            v_buf,
            table,
            md.req_rows,
            md.prefix_lens,
            md.extend_lens,
            md.extend_starts,
            self.scale,
            max_extend=md.max_extend,
        )
