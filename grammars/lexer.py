"""The lazy lexer of the grammar engine: one byte automaton over all terminals, built on demand.

A lexer state is the tuple of (terminal, derivative term) pairs still alive inside the current lexeme;
the start state for a set of allowed terminals pairs each with its whole regex. States are interned to
small ints and their transition rows (256 next states, `DEAD` for none) are filled the first time a
walk reaches them, by taking derivatives once per byte class (`regex_terms.byte_classes`), so a
terminal like `"[^"]{0,2000}"` or an enum of 10,000 names costs nothing until its states are used.

`table` ([capacity, 256] int32, `UNEXPANDED` until filled) and `accepts_any` ([capacity] bool) are
numpy arrays so that the vocabulary walk (`cfg_masks`) can gather from them for many tokens at once;
they grow by doubling (callers re-read the attributes after `expand`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.regex_terms import EMPTY, TermTable, byte_classes

DEAD = -1
UNEXPANDED = -2
ANONYMOUS = -1  # terminal id of the states that token walks are computed in (`token_walks`), never lexed


class Lexer:
    """Interned lexer states over `terminals` (term ids in `terms`); `max_states` bounds them."""

    def __init__(self, terms: TermTable, terminals: Sequence[int], names: list[str], max_states: int):
        self.terms = terms
        self.terminals = terminals  # terminal id -> its start term (earley.LazyTerms builds it on first use)
        self.names = names
        self.max_states = max_states
        self.states: list[tuple[tuple[int, int], ...]] = []
        self.accepts: list[tuple[int, ...]] = []  # terminal ids whose lexeme may end here
        self._ids: dict[tuple[tuple[int, int], ...], int] = {}
        self._starts: dict[frozenset[int], int] = {}
        self.table = np.full((64, 256), UNEXPANDED, dtype=np.int32)
        self.accepts_any = np.zeros(64, dtype=bool)

    @property
    def num_states(self) -> int:
        return len(self.states)

    def state(self, pairs: tuple[tuple[int, int], ...]) -> int:
        terms = self.terms
        if terms.has_looks and any(terms.looks[term] for _, term in pairs):  # it may match nothing
            pairs = tuple(p for p in pairs if not terms.looks[p[1]] or terms.live(p[1]))
        if not pairs:
            return DEAD
        s = self._ids.get(pairs)
        if s is not None:
            return s
        s = len(self.states)
        if s >= self.max_states:
            raise GrammarError(
                f"the grammar's lexer needs more than {self.max_states} states (GrammarLimits.max_lexer_states); "
                "a terminal regex is too large or too ambiguous"
            )
        if s >= self.table.shape[0]:
            grown = np.full((2 * self.table.shape[0], 256), UNEXPANDED, dtype=np.int32)
            grown[: self.table.shape[0]] = self.table
            acc = np.zeros(grown.shape[0], dtype=bool)
            acc[: self.accepts_any.shape[0]] = self.accepts_any
            self.table, self.accepts_any = grown, acc
        self._ids[pairs] = s
        self.states.append(pairs)
        nullable = self.terms.nullable
        acc_ids = tuple(tid for tid, term in pairs if nullable[term])
        self.accepts.append(acc_ids)
        self.accepts_any[s] = bool(acc_ids)
        return s

    def start(self, allowed: frozenset[int]) -> int:
        """The state before the first byte of a lexeme of one of `allowed` (DEAD when none)."""
        s = self._starts.get(allowed)
        if s is None:
            s = self._starts[allowed] = self.state(tuple(sorted((tid, self.terminals[tid]) for tid in allowed)))
        return s

    def expand(self, s: int) -> None:
        """Fill the transition row of state `s`."""
        pairs = self.states[s]
        terms = self.terms
        masks: set[int] = set()
        for _, term in pairs:
            masks |= terms.front(term)
        row = np.empty(256, dtype=np.int32)
        for rep, members in byte_classes(masks):
            nxt = []
            for tid, term in pairs:
                d = terms.deriv(term, rep)
                if d != EMPTY:
                    nxt.append((tid, d))
            row[members] = self.state(tuple(nxt))
        self.table[s] = row

    def row(self, s: int) -> np.ndarray:
        if self.table[s, 0] == UNEXPANDED:
            self.expand(s)
        return self.table[s]

    def step(self, s: int, b: int) -> int:
        nxt = int(self.table[s, b])
        if nxt == UNEXPANDED:
            self.expand(s)
            nxt = int(self.table[s, b])
        return nxt
