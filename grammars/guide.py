"""The guide protocol, and the compilers that make guides from regexes, choice lists and Python types.

A `Guide` walks a language token by token. States are ints: `initial_state`, then
`advance(state, token_id)`; `allowed_tokens(state)` / `allowed_bitmask(state)` say what may come next
(EOS exactly in accepting states), `forced_bytes(state)` is the unique continuation used by
jump-forward, `is_finished(state)` says the output can only end, and `matches(text)` is whole-string
membership. Every guide is a byte-level DFA plus its token index (`regex_dfa`, `token_index`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.limits import GrammarLimits
from loomlm.grammars.regex_dfa import ByteDFA, compile_dfa
from loomlm.grammars.token_index import EOS_STATE, TokenIndex, build_token_index
from loomlm.grammars.vocabulary import Vocabulary

# Typed shortcuts: what `gen(dtype=...)` constrains to. Each one's output parses with the type itself
# (int(), float(), `== "True"`) or, for str, with json.loads.
INT_REGEX = r"-?(0|[1-9][0-9]{0,18})"
FLOAT_REGEX = r"-?(0|[1-9][0-9]{0,18})(\.[0-9]{1,17})?([eE][+-]?[0-9]{1,3})?"
BOOL_REGEX = r"(True|False)"
STR_REGEX = r'"([^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_TYPE_REGEXES = {int: INT_REGEX, float: FLOAT_REGEX, bool: BOOL_REGEX, str: STR_REGEX}
FINISHED = EOS_STATE   # the state after EOS


@dataclass(frozen=True, eq=False)
class Guide:
    dfa: ByteDFA
    index: TokenIndex
    vocab: Vocabulary
    description: str

    @property
    def initial_state(self) -> int:
        return 0

    @property
    def num_states(self) -> int:
        return self.dfa.num_states

    def allowed_bitmask(self, state: int) -> np.ndarray:
        """Packed int32 [ceil(V/32)]: bit t%32 of word t//32 set when token t is allowed (a view)."""
        if state == FINISHED:
            return np.zeros(self.index.masks.shape[1], dtype=np.int32)
        return self.index.mask_row(state)

    def allowed_tokens(self, state: int) -> np.ndarray:
        """Bool mask [V] of the tokens allowed next."""
        if state == FINISHED:
            return np.zeros(self.vocab.size, dtype=bool)
        return self.index.allowed(state)

    def is_allowed(self, state: int, token_id: int) -> bool:
        return state != FINISHED and self.index.is_allowed(state, token_id)

    def advance(self, state: int, token_id: int) -> int:
        """The state after `token_id`; `FINISHED` after EOS. A token not allowed raises ValueError."""
        nxt = self.index.advance(state, token_id) if state != FINISHED else -1
        if nxt == -1:
            raise ValueError(f"token {token_id} is not allowed in state {state} of {self.description}")
        return nxt

    def is_accepting(self, state: int) -> bool:
        return state == FINISHED or bool(self.dfa.accepting[state])

    def is_finished(self, state: int) -> bool:
        """Nothing but the end may follow: after EOS, or accepting with no token to continue."""
        return state == FINISHED or (bool(self.dfa.accepting[state])
                                     and self.index.num_allowed[self.index.state_class[state]] == 0)

    def forced_bytes(self, state: int) -> bytes:
        """The unique continuation of `state` (b"" when the next byte is a choice, or it may end)."""
        return b"" if state == FINISHED else self.dfa.forced_bytes(state)

    def step_bytes(self, state: int, data: bytes) -> int:
        """State after the bytes `data` (any token boundaries), -1 if they leave the language."""
        return -1 if state == FINISHED else self.dfa.step(state, data)

    def matches(self, text: str | bytes) -> bool:
        return self.dfa.matches(text)

    def mask_class(self, state: int) -> int:
        """Row of `index.masks` holding `state`'s mask (mask-equivalent states share one)."""
        return int(self.index.state_class[state])


def compile_regex(pattern: str, vocab: Vocabulary, limits: GrammarLimits | None = None,
                  description: str | None = None) -> Guide:
    limits = limits or GrammarLimits()
    dfa = compile_dfa(pattern, limits)
    budget = limits.start(description or f"regex {pattern[:80]!r}")
    index = build_token_index(dfa.transitions, dfa.accepting, vocab, budget)
    return Guide(dfa, index, vocab, description or f"regex {pattern[:80]!r}")


def choices_regex(choices: Sequence[str]) -> str:
    if isinstance(choices, str) or not isinstance(choices, (list, tuple)):
        raise GrammarError(f"choices must be a list of strings, got {type(choices).__name__}")
    if not choices:
        raise GrammarError("choices must not be empty")
    for c in choices:
        if not isinstance(c, str):
            raise GrammarError(f"choices must be strings, got {c!r}")
    return "|".join(f"({escape_literal(c)})" for c in choices)


def compile_choices(choices: Sequence[str], vocab: Vocabulary, limits: GrammarLimits | None = None) -> Guide:
    """Exactly one of `choices` (the empty string is a valid choice)."""
    return compile_regex(choices_regex(choices), vocab, limits, f"choices {list(choices)[:8]!r}")


def type_regex(python_type: type) -> str:
    try:
        return _TYPE_REGEXES[python_type]
    except (KeyError, TypeError):
        raise GrammarError(f"no typed shortcut for {python_type!r}; use int, float, bool or str") from None


def compile_type(python_type: type, vocab: Vocabulary, limits: GrammarLimits | None = None) -> Guide:
    """Typed shortcuts: int, float, bool ("True"/"False"), str (a JSON string literal)."""
    return compile_regex(type_regex(python_type), vocab, limits, f"type {python_type.__name__}")


def compile_json_schema(schema: Any, vocab: Vocabulary, whitespace: str = "default", strict: bool = True,
                        limits: GrammarLimits | None = None) -> Guide:
    """A JSON schema (dict, JSON text, or pydantic model class) through its regex."""
    from loomlm.grammars.json_schema import json_schema_to_regex

    pattern = json_schema_to_regex(schema, whitespace=whitespace, strict=strict)
    text = schema if isinstance(schema, str) else (
        json.dumps(schema)[:80] if isinstance(schema, (dict, bool)) else getattr(schema, "__name__", "schema"))
    return compile_regex(pattern, vocab, limits, f"JSON schema {str(text)[:80]}")


def escape_literal(text: str) -> str:
    """A regex matching exactly `text`, in the dialect both `re` and interegular read."""
    out = []
    for ch in text:
        if ch.isalnum() or ch in " _\"',:;<>=!@#%&~`/" or ord(ch) > 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out)
