"""Size, work and time limits of one grammar compile (regex, JSON schema, choices).

Three budgets, checked at the same points of every stage (NFA, subset construction, byte lowering,
minimisation, token index):

- `max_states`: automaton states; deterministic.
- `max_work`: abstract work units (about one per automaton state or index entry processed); deterministic,
  so it is the budget tests use to make a compile "overrun" on any machine. None: unlimited.
- The grammar engine's limits, all deterministic: `max_grammar_rules` (rules after lowering),
  `max_lexer_states` (lazy lexer states), `max_parser_items` (Earley items of one step) and
  `max_mask_fuel` (work of one token mask). They are checked while decoding too, so a pathological
  grammar fails its own request with a GrammarError naming the limit instead of stalling the engine.
- `max_seconds`: wall-clock time read from `clock`. It depends on machine speed and load, so a failure it
  causes is a `GrammarTimeoutError`, which caches must not keep. Tests inject `clock` instead of racing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loomlm.grammars.errors import GrammarError, GrammarTimeoutError


def _positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


@dataclass(frozen=True)
class GrammarLimits:
    """`max_states`: most automaton states (character-level and byte-level DFA alike);
    `max_seconds`: wall-clock budget of one compile; `max_work`: deterministic work budget (None: none);
    `clock`: the seconds source of `max_seconds` (injectable for tests); `max_grammar_rules`,
    `max_lexer_states`, `max_parser_items` and `max_mask_fuel` bound the grammar engine (module doc)."""

    max_states: int = 50_000
    max_seconds: float = 10.0
    max_work: int | None = None
    # the grammar engine (deterministic, each named in the GrammarError it raises)
    max_grammar_rules: int = 200_000  # rules (and terminals) after lowering repetitions
    max_lexer_states: int = 200_000  # lazily built lexer states over the grammar's life
    max_parser_items: int = 20_000  # Earley items in one parser column
    max_mask_fuel: int = 2_000_000  # work units of one token mask (token suffixes checked, rows filled)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if not _positive_int(self.max_states):
            raise ValueError(f"GrammarLimits.max_states must be an int >= 1, got {self.max_states!r}")
        if (
            isinstance(self.max_seconds, bool)
            or not isinstance(self.max_seconds, (int, float))
            or not self.max_seconds > 0
        ):
            raise ValueError(f"GrammarLimits.max_seconds must be > 0, got {self.max_seconds!r}")
        for name in ("max_grammar_rules", "max_lexer_states", "max_parser_items", "max_mask_fuel"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"GrammarLimits.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.max_work is not None and not _positive_int(self.max_work):
            raise ValueError(f"GrammarLimits.max_work must be None or an int >= 1, got {self.max_work!r}")
        if not callable(self.clock):
            raise ValueError(f"GrammarLimits.clock must be callable, got {self.clock!r}")

    def start(self, what: str) -> Budget:
        return Budget(self, what, self.clock() + self.max_seconds)


@dataclass
class Budget:
    """The running budget of one compile; `charge` / `check_*` raise `GrammarError` naming what was too big."""

    limits: GrammarLimits
    what: str
    deadline: float
    work: int = 0

    def charge(self, units: int) -> None:
        """Account `units` of work done since the last check, then check the work and time budgets."""
        self.work += units
        max_work = self.limits.max_work
        if max_work is not None and self.work > max_work:
            raise GrammarError(
                f"compiling {self.what} needs more than the work budget of {max_work} "
                f"(GrammarLimits.max_work); simplify it or raise the limit"
            )
        self.check_time()

    def check_time(self) -> None:
        if self.limits.clock() > self.deadline:
            raise GrammarTimeoutError(
                f"compiling {self.what} took longer than the budget of "
                f"{self.limits.max_seconds:g} s (GrammarLimits.max_seconds)"
            )

    def check_states(self, n: int, kind: str = "DFA") -> None:
        if n > self.limits.max_states:
            raise GrammarError(
                f"{self.what} needs more than {self.limits.max_states} {kind} states "
                f"(GrammarLimits.max_states); simplify it or raise the limit"
            )
