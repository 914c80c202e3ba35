"""Structured output in the engine: per-request guide state, batched logit masks, jump-forward plans.

Only the `Guide` protocol (loomlm.grammars) is used, so any guide plugs in: the byte DFA, or a guide
with no precomputed mask table at all.

Masks: one table, the *arena*, caches packed mask rows keyed by (guide, `mask_key(state)`); row 0 is all
ones ("unconstrained"). A row is filled with `guide.fill_bitmask` the first time its key is seen (for the
byte DFA, once per mask class in use). Each sampler row points at its current arena row
(`arena_row[R]`); when its guide advances, `update` is a dict lookup and one scalar write. A step's
masks are one gather of the batch's rows (numpy `take` on CPU, `index_select` on CUDA), a bit unpack
and a `masked_fill`, with no Python loop over the batch or the vocabulary.

Eviction: when the last request of a guide ends, its rows go to a free list and are reused by later
fills, so the arena holds about the rows live guides have touched. It never exceeds `max_cached_rows`:
at that size, the cached rows no sampler row points at are dropped (they are filled again on demand).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from loomlm.grammars import REJECTED, GrammarError, Guide, JumpPlan, bitmask_words, plan_jump, plan_prefix_jump

_DEFAULT_CACHE_BYTES = 256 << 20  # arena bound: ~13k rows of a 150k-token vocabulary
_INITIAL_ROWS = 64


@dataclass
class GrammarState:
    """A constrained request's position in its guide (one per request, also for each of n copies)."""

    guide: Guide
    state: Any = None  # None: the guide's initial state
    prev_state: Any = None  # before the last output token (jump-forward re-tokenizes that token)
    rejected: bool = False  # a sampled token the guide did not allow (never expected)
    error: str | None = None  # a grammar limit hit while decoding (GrammarError): the request is aborted

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = self.guide.initial_state
        if self.prev_state is None:
            self.prev_state = self.state

    def advance(self, token: int) -> None:
        try:
            nxt = self.guide.advance(self.state, token)
        except GrammarError as exc:  # a limit of the grammar engine: this request fails, not the engine
            self.fail(exc)
            return
        if nxt is REJECTED:
            self.rejected = True
            return
        self.prev_state, self.state = self.state, nxt

    def fail(self, exc: GrammarError) -> None:
        self.rejected = True
        self.error = self.error or str(exc)

    @property
    def finished(self) -> bool:
        try:
            return self.guide.is_finished(self.state)
        except GrammarError as exc:
            self.fail(exc)
            return False

    def plan_jump(self, last_token: int, encode: Callable[[str], Sequence[int]], max_tokens: int) -> JumpPlan | None:
        if self.rejected or self.finished:
            return None
        try:
            return plan_jump(self.guide, self.prev_state, last_token, self.state, encode, max_tokens)
        except GrammarError as exc:
            self.fail(exc)
            return None

    def plan_prefix_jump(self, encode: Callable[[str], Sequence[int]], max_tokens: int) -> JumpPlan | None:
        if self.finished:
            return None
        try:
            return plan_prefix_jump(self.guide, self.state, encode, max_tokens)
        except GrammarError as exc:
            self.fail(exc)
            return None

    def apply_jump(self, plan: JumpPlan) -> None:
        self.state = plan.state


class ConstraintMasks:
    """Sampler row -> arena row of its guide state's mask; fills and applies a batch's masks."""

    def __init__(
        self, vocab_size: int, max_rows: int, device: torch.device, max_cache_bytes: int = _DEFAULT_CACHE_BYTES
    ):
        self.vocab_size = vocab_size
        self.words = bitmask_words(vocab_size)
        self.device = torch.device(device)
        # Room for row 0, every sampler row's current row and one being filled: eviction always frees one.
        self.max_cached_rows = max(max_rows + 2, max_cache_bytes // (4 * self.words))
        # Host arena and per-row pointers: numpy, so that a step's gather and a token's pointer update
        # cost well under a microsecond on CPU. On CUDA a device copy of the arena is gathered instead
        # (rows filled since the last step are copied over before it).
        self.arena = np.empty((min(_INITIAL_ROWS, self.max_cached_rows), self.words), dtype=np.int32)
        self.arena[0] = -1
        self.num_rows = 1  # arena rows ever handed out (high-water mark)
        self._free: list[int] = []  # handed-out rows no key uses now
        self.arena_row = np.zeros(max_rows, dtype=np.int64)
        self._device_arena: torch.Tensor | None = None
        self._dirty: list[int] = []  # rows filled since the device copy was synced
        self._buf = np.empty((max_rows, self.words), dtype=np.int32)
        self._buf_t = torch.from_numpy(self._buf)
        self._tables: dict[int, dict[Hashable, int]] = {}  # id(guide) -> mask key -> arena row
        self._guides: dict[int, Guide] = {}  # keeps each id() above alive and unique
        self._users: dict[int, int] = {}  # id(guide) -> sampler rows using it
        self._row_state: dict[int, GrammarState] = {}
        self._row_table: dict[int, dict[Hashable, int]] = {}  # sampler row -> its guide's table
        self._shifts = torch.arange(32, dtype=torch.int32, device=self.device)
        self._pinned: set[int] = set()  # arena rows of a verify pass's draft states (kept from eviction)

    @property
    def active(self) -> bool:
        return bool(self._row_state)

    @property
    def cached_rows(self) -> int:
        """Arena rows holding a cached mask now (row 0 excluded)."""
        return self.num_rows - 1 - len(self._free)

    def begin(self, row: int, gs: GrammarState) -> None:
        guide = gs.guide
        if bitmask_words(guide.vocab.size) != self.words:
            raise ValueError(
                f"guide {guide.description} is over {guide.vocab.size} tokens, the logits over {self.vocab_size}"
            )
        if row in self._row_state:  # re-begun without an end: release the old guide's use first
            self.end(row)
        key = id(guide)
        if key not in self._tables:
            self._tables[key] = {}
            self._guides[key] = guide
        self._users[key] = self._users.get(key, 0) + 1
        self._row_state[row] = gs
        self._row_table[row] = self._tables[key]
        self.update(row)

    def end(self, row: int) -> None:
        gs = self._row_state.pop(row, None)
        if gs is None:
            return
        del self._row_table[row]
        self.arena_row[row] = 0
        key = id(gs.guide)
        self._users[key] -= 1
        if self._users[key] == 0:  # nobody uses the guide: its rows are free for other guides
            del self._users[key], self._guides[key]
            self._free.extend(self._tables.pop(key).values())

    def update(self, row: int) -> None:
        """Point `row` at its guide's current state (after `advance` or a jump): O(1) dict work on a hit."""
        gs = self._row_state[row]
        try:
            arena_row = self._lookup(self._row_table[row], gs.guide, gs.state)
        except GrammarError as exc:  # allow EOS only; the output processor then aborts the request
            gs.fail(exc)
            arena_row = self._alloc()
            self.arena[arena_row] = 0
            for eos in gs.guide.vocab.eos_token_ids:
                self.arena[arena_row, eos >> 5] |= np.int32(np.uint32(1 << (eos & 31)).view(np.int32))
            self._free.append(arena_row)  # never cached: the next fill overwrites it
            self._dirty.append(arena_row)
        self.arena_row[row] = arena_row

    def draft_rows(self, row: int, states: Sequence[Any]) -> list[int]:
        """Arena rows of the masks at `states`, the guide states `row`'s request would reach through its
        speculative drafts (a verify pass). Stops before the first state whose mask cannot be computed
        (a grammar limit: the request meets it when it gets there). The rows are kept from eviction
        until `unpin_drafts`."""
        gs = self._row_state[row]
        table = self._row_table[row]
        out = []
        for state in states:
            try:
                arena_row = self._lookup(table, gs.guide, state)
            except GrammarError:
                break
            self._pinned.add(arena_row)
            out.append(arena_row)
        return out

    def unpin_drafts(self) -> None:
        self._pinned.clear()

    def _lookup(self, table: dict[Hashable, int], guide: Guide, state: Any) -> int:
        """The arena row of `state`'s mask, filled on a miss (GrammarError propagates, nothing cached)."""
        key = guide.mask_key(state)
        arena_row = table.get(key)
        if arena_row is None:
            arena_row = self._alloc()
            try:
                guide.fill_bitmask(state, self.arena[arena_row])
            except GrammarError:
                self._free.append(arena_row)
                raise
            table[key] = arena_row
            self._dirty.append(arena_row)
        return arena_row

    def _alloc(self) -> int:
        if not self._free and self.num_rows == self.max_cached_rows:
            self._evict_unpointed()
        if self._free:
            return self._free.pop()
        if self.num_rows == len(self.arena):
            grown = np.empty((min(2 * len(self.arena), self.max_cached_rows), self.words), dtype=np.int32)
            grown[: self.num_rows] = self.arena[: self.num_rows]
            self.arena = grown
            self._device_arena = None  # copied again whole
        self.num_rows += 1
        return self.num_rows - 1

    def _evict_unpointed(self) -> None:
        """Drop the cached rows no sampler row points at (the arena is full)."""
        pointed = {int(self.arena_row[r]) for r in self._row_state} | self._pinned
        for table in self._tables.values():
            for key in [k for k, r in table.items() if r not in pointed]:
                self._free.append(table.pop(key))

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

    def _synced_device_arena(self) -> torch.Tensor:
        if self._device_arena is None:  # a copy even on CPU (tests check the sync through it)
            self._device_arena = torch.from_numpy(self.arena).to(self.device, copy=True)
        elif self._dirty:
            index = np.unique(np.array(self._dirty, dtype=np.int64))
            self._device_arena[torch.from_numpy(index).to(self.device)] = torch.from_numpy(self.arena[index]).to(
                self.device
            )
        self._dirty.clear()
        return self._device_arena

    def apply(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """logits [B, V] float, rows [B] sampler rows -> logits with disallowed tokens at -inf (on CUDA
        the Triton bitmask kernel writes them in place)."""
        rows_np = rows.cpu().numpy()
        if self.device.type == "cpu":
            return self._mask(logits, self.bitmask(self.fill_bitmask(rows_np)))
        return self.apply_arena_rows(logits, self.arena_row.take(rows_np))

    def apply_arena_rows(self, logits: torch.Tensor, arena_rows: np.ndarray) -> torch.Tensor:
        """Like `apply`, with each logits row's arena row given ([B] int64; a verify pass's rows)."""
        if self.device.type == "cpu":
            return self._mask(logits, torch.from_numpy(self.arena.take(arena_rows, axis=0)))
        arena = self._synced_device_arena()
        packed = arena.index_select(0, torch.from_numpy(arena_rows).to(self.device, non_blocking=True))
        if logits.stride(-1) == 1:
            from loomlm.kernels.fused_ops import apply_token_bitmask_

            return apply_token_bitmask_(logits, packed)
        return self._mask(logits, packed)

    def _mask(self, logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """packed [B, W] int32 bit rows -> logits with the cleared bits' tokens at -inf."""
        bits = (packed.unsqueeze(-1) >> self._shifts) & 1  # [B, W, 32]
        allowed = bits.view(len(packed), -1)[:, : logits.shape[-1]].bool()
        return logits.masked_fill(~allowed, float("-inf"))
