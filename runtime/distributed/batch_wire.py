"""One step's forward, as rank 0 sends it to the other tensor-parallel ranks: one int64 tensor.

The other ranks hold no scheduler: what they need of a step is the `ForwardBatch` and, for attention,
the slots of every sequence in it (the rows of rank 0's `req_to_token` table up to each sequence's
length), which they write into their own table before the forward. Everything is integers, so the
message is a flat int64 tensor (no pickle): a header of sizes, then the tensors in a fixed order.

    [mode, T, B, N, S, G, (P_g, M_g) x G] input_ids[T] positions[T] out_slots[T] req_rows[B]
    prefix_lens[B] extend_lens[B] logits_indices[N] slots[S] (group slots[P_g], members[M_g]) x G

The empty tensor is the stop message.
"""

from __future__ import annotations

import torch

from loomlm.runtime.forward_context import ForwardBatch, ForwardMode, SharedPrefix
from loomlm.runtime.memory_pool import ReqToTokenPool

_MODES = (ForwardMode.EXTEND, ForwardMode.DECODE)
STOP = torch.zeros(0, dtype=torch.int64)


def _long(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.int64).reshape(-1)


def _positions(seq_lens: torch.Tensor) -> torch.Tensor:
    """[sum(seq_lens)]: 0..n-1 for each length n in turn."""
    starts = torch.cumsum(seq_lens, 0) - seq_lens
    return torch.arange(int(seq_lens.sum())) - torch.repeat_interleave(starts, seq_lens)


def encode_forward(batch: ForwardBatch, req_pool: ReqToTokenPool) -> torch.Tensor:
    """What the other ranks need to run `batch` (built on rank 0 before its forward)."""
    rows = _long(batch.req_rows)
    seq_lens = _long(batch.prefix_lens) + _long(batch.extend_lens)  # [B]
    longest = int(seq_lens.max()) if seq_lens.numel() else 0
    table = req_pool.req_to_token
    block = table[rows.to(table.device), :longest].cpu()  # [B, L]
    slots = block[torch.arange(longest)[None, :] < seq_lens[:, None]]
    groups = batch.shared_prefixes
    header = [_MODES.index(batch.mode), batch.num_tokens, batch.batch_size, batch.logits_indices.numel()]
    header += [slots.numel(), len(groups)]
    for g in groups:
        header += [g.slots.numel(), g.members.numel()]
    parts = [torch.tensor(header, dtype=torch.int64), _long(batch.input_ids), _long(batch.positions)]
    parts += [_long(batch.out_slots), rows, _long(batch.prefix_lens), _long(batch.extend_lens)]
    parts += [_long(batch.logits_indices), _long(slots)]
    for g in groups:
        parts += [_long(g.slots), _long(g.members)]
    return torch.cat(parts)


def decode_forward(message: torch.Tensor, req_pool: ReqToTokenPool) -> ForwardBatch:
    """Write the message's slots into this rank's table; returns its batch (host tensors)."""
    mode, T, B, N, S, G = message[:6].tolist()
    group_sizes = message[6 : 6 + 2 * G].tolist()
    sizes = [T, T, T, B, B, B, N, S, *group_sizes]
    pieces = list(torch.split(message[6 + 2 * G :], sizes))
    input_ids, positions, out_slots, req_rows, prefix_lens, extend_lens, logits_indices, slots = pieces[:8]
    groups = tuple(SharedPrefix(pieces[8 + 2 * i], pieces[9 + 2 * i]) for i in range(G))
    seq_lens = prefix_lens + extend_lens
    table = req_pool.req_to_token
    where = (torch.repeat_interleave(req_rows, seq_lens).to(table.device), _positions(seq_lens).to(table.device))
    table[where] = slots.to(table.device, table.dtype)
    return ForwardBatch(
        mode=_MODES[mode],
        input_ids=input_ids,
        positions=positions,
        out_slots=out_slots,
        req_rows=req_rows,
        prefix_lens=prefix_lens,
        extend_lens=extend_lens,
        logits_indices=logits_indices,
        shared_prefixes=groups,
    )
