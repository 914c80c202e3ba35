"""Structured output in the engine: per-request guide state, batched logit masks, jump-forward plans.

Masks: every guide in use has its packed bitmask table [C, W] (one row per mask class of states)
copied once into one table, the *arena* (row 0 is all ones: "unconstrained"). Each sampler row points
at its current arena row
(`arena_row[R]`, updated by one scalar write when its guide advances), so a step's masks are one
gather of the batch's rows (numpy `take` on CPU, `index_select` on CUDA), a bit unpack and a
`masked_fill`, with no Python loop over the batch or the vocabulary. Guides leave the arena when no request uses them; the arena is rebuilt from
the live guides when more than half of it is dead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from loomlm.grammars.guide import Guide
from loomlm.grammars.jump_forward import JumpPlan, plan_jump, plan_prefix_jump


@dataclass
class GrammarState:
    """A constrained request's position in its guide (one per request, also for each of n copies)."""

    guide: Guide
    state: int = 0
    prev_state: int = 0          # before the last output token (jump-forward re-tokenizes that token)
    rejected: bool = False       # a sampled token the guide did not allow (never expected)

    def advance(self, token: int) -> None:
        nxt = self.guide.index.advance(self.state, token)
        if nxt == -1:
            self.rejected = True
            return
        self.prev_state, self.state = self.state, nxt

    @property
    def finished(self) -> bool:
        return self.guide.is_finished(self.state)

    def plan_jump(self, last_token: int, encode: Callable[[str], Sequence[int]], max_tokens: int) -> JumpPlan | None:
        if self.rejected or self.finished:
            return None
        return plan_jump(self.guide, self.prev_state, last_token, self.state, encode, max_tokens)

    def plan_prefix_jump(self, encode: Callable[[str], Sequence[int]], max_tokens: int) -> JumpPlan | None:
        if self.finished:
            return None
        return plan_prefix_jump(self.guide, self.state, encode, max_tokens)

    def apply_jump(self, plan: JumpPlan) -> None:
        self.state = plan.state


class ConstraintMasks:
    """Sampler row -> arena row of its guide state; fills and applies a batch's masks."""

    def __init__(self, vocab_size: int, max_rows: int, device: torch.device):
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.device = torch.device(device)
        # Host arena (row 0: all allowed) and per-row pointers: numpy, so that a step's gather and a
        # token's pointer update cost well under a microsecond on CPU. On CUDA a device copy of the
        # arena is gathered instead (made again when guides come or go).
        self.arena = np.full((1, self.words), -1, dtype=np.int32)
        self.arena_row = np.zeros(max_rows, dtype=np.int64)
        self._device_arena: torch.Tensor | None = None
        self._buf = np.empty((max_rows, self.words), dtype=np.int32)
        self._buf_t = torch.from_numpy(self._buf)
        self._base: dict[int, int] = {}            # id(guide) -> first arena row
        self._guides: dict[int, Guide] = {}
        self._users: dict[int, int] = {}           # id(guide) -> rows using it
        self._row_state: dict[int, GrammarState] = {}
        self._dead_rows = 0
        self._shifts = torch.arange(32, dtype=torch.int32, device=self.device)

    @property
    def active(self) -> bool:
        return bool(self._row_state)

    def begin(self, row: int, gs: GrammarState) -> None:
        key = id(gs.guide)
        if key not in self._base:
            self._add_guide(gs.guide)
        self._users[key] = self._users.get(key, 0) + 1
        self._row_state[row] = gs
        self.update(row)

    def end(self, row: int) -> None:
        gs = self._row_state.pop(row, None)
        if gs is None:
            return
        self.arena_row[row] = 0
        key = id(gs.guide)
        self._users[key] -= 1
        if self._users[key] == 0:
            del self._users[key], self._base[key]
            self._dead_rows += self._guides.pop(key).index.num_classes

    def update(self, row: int) -> None:
        """Point `row` at its guide's current state (after `advance` or a jump)."""
        gs = self._row_state[row]
        if gs.state >= 0:
            self.arena_row[row] = self._base[id(gs.guide)] + gs.guide.mask_class(gs.state)

    def _add_guide(self, guide: Guide) -> None:
        if self._dead_rows > len(self.arena) // 2:
            self._compact()
        key = id(guide)
        self._base[key] = len(self.arena)
        self._guides[key] = guide
        self.arena = np.concatenate([self.arena, guide.index.masks])
        self._device_arena = None

    def _compact(self) -> None:
        parts = [self.arena[:1]]
        base = 1
        for key, guide in self._guides.items():
            parts.append(guide.index.masks)
            self._base[key] = base
            base += guide.index.num_classes
        self.arena = np.concatenate(parts)
        self._device_arena = None
        self._dead_rows = 0
        for row in self._row_state:
            self.update(row)

    def fill_bitmask(self, rows: np.ndarray) -> int:
        """Write the packed masks of sampler `rows` [B] into the host buffer's first B rows (the
        per-token mask operation; `bitmask()` views the result). Returns B."""
        n = len(rows)
        if n == 1:
            self._buf[0] = self.arena[self.arena_row[rows[0]]]
        else:
            self.arena.take(self.arena_row.take(rows), axis=0, out=self._buf[:n])
        return n

    def bitmask(self, n: int) -> torch.Tensor:
        """The first `n` rows written by `fill_bitmask`, as a [n, W] int32 CPU tensor (no copy)."""
        return self._buf_t[:n]

    def apply(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """logits [B, V] float, rows [B] sampler rows -> logits with disallowed tokens at -inf (on CUDA
        the Triton bitmask kernel writes them in place)."""
        rows_np = rows.cpu().numpy()
        if self.device.type == "cpu":
            packed = self.bitmask(self.fill_bitmask(rows_np))                         # [B, W] int32
        else:
            if self._device_arena is None:
                self._device_arena = torch.from_numpy(self.arena).to(self.device)
            index = torch.from_numpy(self.arena_row.take(rows_np)).to(self.device, non_blocking=True)
            packed = self._device_arena.index_select(0, index)
            if logits.stride(-1) == 1:
                from loomlm.kernels.fused_ops import apply_token_bitmask_
                return apply_token_bitmask_(logits, packed)
        bits = (packed.unsqueeze(-1) >> self._shifts) & 1                             # [B, W, 32]
        allowed = bits.view(len(packed), -1)[:, :logits.shape[-1]].bool()
        return logits.masked_fill(~allowed, float("-inf"))
