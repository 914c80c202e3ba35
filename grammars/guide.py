"""`DFAGuide`, the byte-DFA implementation of the `Guide` protocol, and the compilers that make it from
regexes, choice lists, Python types and JSON schemas.

A `DFAGuide` is a byte-level DFA plus its token index (`regex_dfa`, `token_index`). States are ints:
0 initially, `FINISHED` after EOS. Beyond the protocol (`guide_protocol`) it offers conveniences for
tests and tools: `allowed_tokens` / `allowed_bitmask` / `is_allowed`, `step_bytes` (bytes at any token
boundaries), `matches(text)` (whole-string membership) and `num_states`.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loomlm.grammars.cfg_guide import CFGGuide, compile_cfg
from loomlm.grammars.errors import GrammarError
from loomlm.grammars.guide_protocol import REJECTED
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
FINISHED = EOS_STATE  # the state after EOS
_FINISHED_KEY = -1  # mask key of FINISHED (nothing allowed); mask classes are >= 0


@dataclass(frozen=True, eq=False)
class DFAGuide:
    """A byte DFA and its token index over `vocab`: the `Guide` protocol with int states."""

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

    # ---- the Guide protocol ----------------------------------------------------------------------
    def advance(self, state: int, token_id: int) -> int | Any:
        """The state after `token_id`; `FINISHED` after EOS; `REJECTED` if the token is not allowed."""
        return REJECTED if state == FINISHED else self.index.advance(state, token_id, REJECTED)

    def fill_bitmask(self, state: int, out: np.ndarray) -> None:
        """Copy the packed row of `state`'s mask class into `out` (all zeros once FINISHED)."""
        if state == FINISHED:
            out[:] = 0
        else:
            out[:] = self.index.masks[self.index.state_class[state]]

    def mask_key(self, state: int) -> Hashable:
        """The mask class of `state` (mask-equivalent states share it); FINISHED has its own key."""
        return _FINISHED_KEY if state == FINISHED else int(self.index.state_class[state])

    def is_accepting(self, state: int) -> bool:
        return state == FINISHED or bool(self.dfa.accepting[state])

    def is_finished(self, state: int) -> bool:
        """Nothing but the end may follow: after EOS, or accepting with no token to continue."""
        return state == FINISHED or (
            bool(self.dfa.accepting[state]) and self.index.num_allowed[self.index.state_class[state]] == 0
        )

    def forced_bytes(self, state: int) -> bytes:
        """The unique continuation of `state` (b"" when the next byte is a choice, or it may end)."""
        return b"" if state == FINISHED else self.dfa.forced_bytes(state)

    # ---- conveniences of the byte DFA (tests, tools, benchmarks) ---------------------------------
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

    def step_bytes(self, state: int, data: bytes) -> int:
        """State after the bytes `data` (any token boundaries), -1 if they leave the language."""
        return -1 if state == FINISHED else self.dfa.step(state, data)

    def matches(self, text: str | bytes) -> bool:
        return self.dfa.matches(text)


def compile_regex(
    pattern: str, vocab: Vocabulary, limits: GrammarLimits | None = None, description: str | None = None
) -> DFAGuide:
    limits = limits or GrammarLimits()
    dfa = compile_dfa(pattern, limits)
    budget = limits.start(description or f"regex {pattern[:80]!r}")
    index = build_token_index(dfa.transitions, dfa.accepting, vocab, budget)
    return DFAGuide(dfa, index, vocab, description or f"regex {pattern[:80]!r}")


def choices_regex(choices: Sequence[str]) -> str:
    if isinstance(choices, str) or not isinstance(choices, (list, tuple)):
        raise GrammarError(f"choices must be a list of strings, got {type(choices).__name__}")
    if not choices:
        raise GrammarError("choices must not be empty")
    for c in choices:
        if not isinstance(c, str):
            raise GrammarError(f"choices must be strings, got {c!r}")
    return "|".join(f"({escape_literal(c)})" for c in choices)


def compile_choices(choices: Sequence[str], vocab: Vocabulary, limits: GrammarLimits | None = None) -> DFAGuide:
    """Exactly one of `choices` (the empty string is a valid choice)."""
    return compile_regex(choices_regex(choices), vocab, limits, f"choices {list(choices)[:8]!r}")


def type_regex(python_type: type) -> str:
    try:
        return _TYPE_REGEXES[python_type]
    except (KeyError, TypeError):
        raise GrammarError(f"no typed shortcut for {python_type!r}; use int, float, bool or str") from None


def compile_type(python_type: type, vocab: Vocabulary, limits: GrammarLimits | None = None) -> DFAGuide:
    """Typed shortcuts: int, float, bool ("True"/"False"), str (a JSON string literal)."""
    return compile_regex(type_regex(python_type), vocab, limits, f"type {python_type.__name__}")


def compile_json_schema(
    schema: Any,
    vocab: Vocabulary,
    whitespace: str = "default",
    strict: bool = True,
    limits: GrammarLimits | None = None,
) -> CFGGuide:
    """A JSON schema (dict, JSON text, or pydantic model class) as a grammar guide: objects, arrays and
    `$ref` cycles are rules, scalars are lazily lexed terminals (`json_schema.json_schema_to_grammar`)."""
    from loomlm.grammars.json_schema import json_schema_to_grammar

    grammar = json_schema_to_grammar(schema, whitespace=whitespace, strict=strict)
    text = (
        schema
        if isinstance(schema, str)
        else (json.dumps(schema)[:80] if isinstance(schema, (dict, bool)) else getattr(schema, "__name__", "schema"))
    )
    return compile_cfg(grammar, vocab, limits, f"JSON schema {str(text)[:80]}", lazy_terminals=True)


def escape_literal(text: str) -> str:
    """A regex matching exactly `text`, in the dialect both `re` and interegular read."""
    out = []
    for ch in text:
        if ch.isalnum() or ch in " _\"',:;<>=!@#%&~`/" or ord(ch) > 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out)
