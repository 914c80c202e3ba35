"""Structured output in the engine: per-request guide state, batched logit masks, jump-forward plans.

Masks: every guide in use has its packed bitmask table [S, W] copied once into one device tensor,
the *arena* (row 0 is all ones: "unconstrained"). Each sampler row points at its current arena row
(`arena_row[R]`, updated by one scalar write when its guide advances), so a step's masks are one
`index_select` of the batch's rows, a bit unpack and a `masked_fill`, with no Python loop over the
batch or the vocabulary. Guides leave the arena when no request uses them; the arena is rebuilt from
the live guides when more than half of it is dead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from loomlm.grammars.guide import Guide
from loomlm.grammars.jump_forward import JumpPlan, plan_jump


@dataclass
class GrammarState:
    """A constrained request's position in its guide (one per request, also for each of n copies)."""

    guide: Guide
    state: int = 0
    prev_state: int = 0          # before the last output token (jump-forward re-tokenizes that token)
    jump_forward: bool = True
    jumped_tokens: int = 0       # output tokens appended by jump-forward instead of sampling
    rejected: bool = field(default=False)   # a sampled token the guide did not allow (never expected)

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
        if not self.jump_forward or self.rejected or self.finished:
            return None
        return plan_jump(self.guide, self.prev_state, last_token, self.state, encode, max_tokens)

    def apply_jump(self, plan: JumpPlan) -> None:
        self.state = plan.state
        self.jumped_tokens += len(plan.tokens) - plan.num_replaced


class ConstraintMasks:
    """Sampler row -> arena row of its guide state; applies a batch's masks to its logits."""

    def __init__(self, vocab_size: int, max_rows: int, device: torch.device):
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.device = device
        self.arena = torch.full((1, self.words), -1, dtype=torch.int32, device=device)   # row 0: all allowed
        self.arena_row = torch.zeros(max_rows, dtype=torch.int64, device=device)
        self._base: dict[int, int] = {}            # id(guide) -> first arena row
        self._guides: dict[int, Guide] = {}
        self._users: dict[int, int] = {}           # id(guide) -> rows using it
        self._row_state: dict[int, GrammarState] = {}
        self._dead_rows = 0
        self._shifts = torch.arange(32, dtype=torch.int32, device=device)

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
            self._dead_rows += self._guides.pop(key).num_states

    def update(self, row: int) -> None:
        """Point `row` at its guide's current state (after `advance` or a jump)."""
        gs = self._row_state[row]
        if gs.state >= 0:
            self.arena_row[row] = self._base[id(gs.guide)] + gs.state

    def _add_guide(self, guide: Guide) -> None:
        if self._dead_rows > len(self.arena) // 2:
            self._compact()
        key = id(guide)
        self._base[key] = len(self.arena)
        self._guides[key] = guide
        self.arena = torch.cat([self.arena, guide.device_masks(self.device)])

    def _compact(self) -> None:
        parts = [self.arena[:1]]
        base = 1
        for key, guide in self._guides.items():
            parts.append(guide.device_masks(self.device))
            self._base[key] = base
            base += guide.num_states
        self.arena = torch.cat(parts)
        self._dead_rows = 0
        for row in self._row_state:
            self.update(row)

    def apply(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """logits [B, V] float, rows [B] sampler rows -> logits with disallowed tokens at -inf."""
        packed = self.arena.index_select(0, self.arena_row[rows.to(self.device)])       # [B, W] int32
        bits = (packed.unsqueeze(-1) >> self._shifts) & 1                             # [B, W, 32]
        allowed = bits.view(len(packed), -1)[:, :logits.shape[-1]].bool()
        return logits.masked_fill(~allowed, float("-inf"))
