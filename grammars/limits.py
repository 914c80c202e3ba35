"""Size and time limits of one grammar compile (regex, JSON schema, choices)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from loomlm.grammars.errors import GrammarError


@dataclass(frozen=True)
class GrammarLimits:
    """`max_states`: most automaton states (character-level and byte-level DFA alike);
    `max_seconds`: wall-clock budget of one compile, checked at every stage."""

    max_states: int = 50_000
    max_seconds: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.max_states, bool) or not isinstance(self.max_states, int) or self.max_states < 1:
            raise ValueError(f"GrammarLimits.max_states must be an int >= 1, got {self.max_states!r}")
        if isinstance(self.max_seconds, bool) or not isinstance(self.max_seconds, (int, float)) \
                or not self.max_seconds > 0:
            raise ValueError(f"GrammarLimits.max_seconds must be > 0, got {self.max_seconds!r}")

    def start(self, what: str) -> "Budget":
        return Budget(self, what, time.monotonic() + self.max_seconds)


@dataclass
class Budget:
    """The running budget of one compile; `check_*` raise `GrammarError` naming what was too big."""

    limits: GrammarLimits
    what: str
    deadline: float

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise GrammarError(f"compiling {self.what} took longer than the budget of "
                               f"{self.limits.max_seconds:g} s (GrammarLimits.max_seconds)")

    def check_states(self, n: int, kind: str = "DFA") -> None:
        if n > self.limits.max_states:
            raise GrammarError(f"{self.what} needs more than {self.limits.max_states} {kind} states "
                               f"(GrammarLimits.max_states); simplify it or raise the limit")
