"""The `Guide` protocol: everything the runtime (masks, jump-forward, stop checks) asks of a constraint.

A guide walks a language token by token over one `Vocabulary`. Its states are opaque, immutable,
hashable values (ints for the byte DFA; a context-free guide may use parser-stack tuples), never None:
callers keep old states (jump-forward re-tokenizes from the state before the last token), so `advance`
returns a new state and never mutates one.

The one meaning of "not allowed": `advance` returns `REJECTED` (no exception on the decoding hot path).

Masks: `fill_bitmask(state, out)` writes the packed allowed-token row of `state` into a caller's int32
buffer of `bitmask_words(vocab.size)` words (bit `t % 32` of word `t // 32` set when token t is allowed;
EOS exactly in accepting states). `mask_key(state)` is a cheap hashable key with the invariant
"equal keys -> equal masks" (the byte DFA's mask class; a guide without such classes may return the
state itself), so a runtime can cache filled rows per (guide, key) and fill only on a miss.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from loomlm.grammars.vocabulary import Vocabulary


class _Rejected:
    """Type of the `REJECTED` singleton."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REJECTED"


REJECTED: Any = _Rejected()


def bitmask_words(vocab_size: int) -> int:
    """int32 words of one packed mask row over `vocab_size` tokens."""
    return (vocab_size + 31) // 32


@runtime_checkable
class Guide(Protocol):
    """A constraint the runtime can decode with (see the module docstring for the invariants)."""

    vocab: Vocabulary  # token bytes (jump-forward re-tokenizes with them), size, EOS ids
    description: str  # human-readable, for errors ("token 5 is outside the constraint (...)")

    @property
    def initial_state(self) -> Any: ...

    def advance(self, state: Any, token_id: int) -> Any:
        """The state after `token_id` (after EOS: a finished state), or `REJECTED` if not allowed."""
        ...

    def fill_bitmask(self, state: Any, out: np.ndarray) -> None:
        """Write `state`'s packed allowed-token row into `out` ([bitmask_words(vocab.size)] int32)."""
        ...

    def mask_key(self, state: Any) -> Hashable:
        """Cheap key; states with equal keys have equal masks."""
        ...

    def is_accepting(self, state: Any) -> bool:
        """The output may end here (EOS is allowed)."""
        ...

    def is_finished(self, state: Any) -> bool:
        """Nothing but the end may follow (after EOS, or accepting with no token to continue)."""
        ...

    def forced_bytes(self, state: Any) -> bytes:
        """The unique continuation of `state`, b"" when the next byte is a choice or it may end here."""
        ...


def allowed_tokens(guide: Guide, state: Any) -> np.ndarray:
    """Bool mask [V] of the tokens `guide` allows in `state`, through the protocol alone (tests, tools)."""
    V = guide.vocab.size
    row = np.zeros(bitmask_words(V), dtype=np.int32)
    guide.fill_bitmask(state, row)
    return np.unpackbits(row.view(np.uint8), bitorder="little")[:V].astype(bool)
