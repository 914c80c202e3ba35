"""Per-forward data, passed explicitly through the model (no globals).

A forward processes T new tokens belonging to B requests, flattened in request order. Request b owns
`extend_lens[b]` consecutive tokens whose positions are `prefix_lens[b] .. seq_lens[b]-1`; the K/V of its
first `prefix_lens[b]` tokens are already in the pool at `req_to_token[req_rows[b], :prefix_lens[b]]`.

`ForwardBatch` declares those tensors once: the scheduler's `ScheduledBatch` extends it with what the
engine needs around the forward, and `ForwardContext` holds the device copy of it (`ForwardBatch.to`)
next to the pools and the attention backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from loomlm.runtime.attention.base import AttentionBackend
    from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool


@dataclass(frozen=True)
class SharedPrefix:
    """Decode requests whose first `len(slots)` tokens are the same cached tokens (one radix path).

    Attention reads those keys once for the whole group instead of once per request."""

    slots: torch.Tensor  # [P] int64, the shared tokens' slots
    members: torch.Tensor  # [M] int64, indices into the batch (M >= 2)


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # several new tokens per request, causal over prefix + themselves
    DECODE = "decode"  # exactly one new token per request


@dataclass
class ForwardBatch:
    """The tensors of one forward. Built on the host by the scheduler; `to(device)` copies the token-level
    ones to the model's device. `prefix_lens` and `extend_lens` stay on the host (the backends derive
    their metadata from them without a device -> host sync); `req_rows` stays where it is."""

    mode: ForwardMode
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, position of each token in its sequence
    out_slots: torch.Tensor  # [T] int64, KV slot that receives each token's K/V
    req_rows: torch.Tensor  # [B] int64, rows of req_to_token
    prefix_lens: torch.Tensor  # [B] int64 (CPU), tokens already cached per request
    extend_lens: torch.Tensor  # [B] int64 (CPU), new tokens per request
    logits_indices: torch.Tensor  # [N] int64, rows of the hidden states projected to logits
    # Decode only: groups sharing a cached prefix; a member's own keys start after its group's prefix.
    shared_prefixes: tuple[SharedPrefix, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.extend_lens.numel())

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device: torch.device) -> ForwardBatch:
        """A plain ForwardBatch whose token-level tensors are on `device` (non-blocking host -> device
        copies; a no-op on CPU)."""

        def dev(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return ForwardBatch(
            mode=self.mode,
            input_ids=dev(self.input_ids),
            positions=dev(self.positions),
            out_slots=dev(self.out_slots),
            req_rows=self.req_rows,
            prefix_lens=self.prefix_lens,
            extend_lens=self.extend_lens,
            logits_indices=dev(self.logits_indices),
            shared_prefixes=tuple(SharedPrefix(dev(g.slots), dev(g.members)) for g in self.shared_prefixes),
        )


@dataclass
class ForwardContext:
    """What the model and the attention backend see during one forward."""

    batch: ForwardBatch  # on the model's device (see ForwardBatch for what stays on the host)
    kv_pool: KVPool
    req_to_token_pool: ReqToTokenPool
    attn_backend: AttentionBackend
    attn_metadata: Any = field(default=None)  # filled by attn_backend.prepare(self)
