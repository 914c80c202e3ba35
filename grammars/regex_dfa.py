"""`ByteDFA`: the minimal byte-level automaton of a regex, and `compile_dfa(pattern)`.

Every language loomlm constrains to (regex, JSON schema via its regex, choices, typed shortcuts) ends
up here. Only live states are kept: every state can still reach acceptance, so "the next byte leads to
a state" already means "the text so far is a prefix of some string in the language".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from loomlm.grammars.dfa_build import DEAD, determinise, minimise, to_bytes, trim
from loomlm.grammars.errors import GrammarError
from loomlm.grammars.limits import GrammarLimits
from loomlm.grammars.regex_nfa import build_nfa


@dataclass(frozen=True, eq=False)
class ByteDFA:
    """transitions [S, 256] int32 (-1 = dead), accepting [S] bool; state 0 is the initial state."""

    transitions: np.ndarray
    accepting: np.ndarray
    pattern: str = ""
    _forced: dict[int, bytes] = field(default_factory=dict, repr=False)

    @property
    def num_states(self) -> int:
        return len(self.transitions)

    @property
    def initial_state(self) -> int:
        return 0

    def step(self, state: int, data: bytes) -> int:
        """State after reading `data` from `state`; -1 once the text leaves the language's prefixes."""
        table = self.transitions
        for byte in data:
            if state < 0:
                return DEAD
            state = int(table[state, byte])
        return state

    def matches(self, text: str | bytes) -> bool:
        """Whole-string membership."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        state = self.step(0, data)
        return state >= 0 and bool(self.accepting[state])

    def forced_bytes(self, state: int) -> bytes:
        """The bytes every continuation from `state` starts with, up to the first accepting state or
        choice. Terminates: on a trimmed DFA a forced path cannot loop without reaching acceptance."""
        cached = self._forced.get(state)
        if cached is not None:
            return cached
        out = bytearray()
        s = state
        while s >= 0 and not self.accepting[s]:
            live = np.flatnonzero(self.transitions[s] >= 0)
            if len(live) != 1:
                break
            out.append(int(live[0]))
            s = int(self.transitions[s, live[0]])
        self._forced[state] = bytes(out)
        return bytes(out)


def compile_dfa(pattern: str, limits: GrammarLimits | None = None) -> ByteDFA:
    """Compile `pattern` (see `regex_nfa` for the dialect); `GrammarError` on bad or too-big input."""
    limits = limits or GrammarLimits()
    budget = limits.start(f"regex {_short(pattern)}")
    nfa = build_nfa(pattern, budget)
    trans, accepting, class_seqs = determinise(nfa, budget)
    table, acc = to_bytes(trans, accepting, class_seqs, budget)
    table, acc = trim(table, acc)
    if len(table) == 0:
        raise GrammarError(f"regex {_short(pattern)} matches no string (its language is empty)")
    table, acc = minimise(table, acc, budget)
    return ByteDFA(table, acc, pattern)


def _short(pattern: str, limit: int = 80) -> str:
    return repr(pattern if len(pattern) <= limit else pattern[:limit] + "...")
