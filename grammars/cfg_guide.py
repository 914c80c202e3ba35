"""`CFGGuide`: the `Guide` protocol over a context-free grammar (Earley parser + lazy lexer).

A state is a small int naming an interned set of (column, lexer state) pairs: every way the bytes so
far can be split into terminals that the parser still accepts (lexer ambiguity is kept, not resolved
greedily: a lexeme may end wherever its terminal accepts, as lark's `dynamic_complete` Earley lexer
allows). `FRESH` as the lexer state means "at a lexeme boundary". Bytes move a state through
`step` (cached per (state, byte)); a token's bytes are a walk of such steps, so advancing costs a few
dict lookups once the states it passes were seen. After EOS the state is `FINISHED`.

Masks come from `cfg_masks.MaskBuilder` and are cached per state (the state id is the mask key).
Everything is built lazily and bounded by the `GrammarLimits` fields of the grammar engine, which
raise `GrammarError` naming the limit.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from loomlm.grammars.cfg_masks import FRESH, MaskBuilder
from loomlm.grammars.earley import Column, CompiledGrammar, compile_grammar
from loomlm.grammars.errors import GrammarError
from loomlm.grammars.grammar_ir import Grammar
from loomlm.grammars.guide_protocol import REJECTED, bitmask_words
from loomlm.grammars.lexer import DEAD
from loomlm.grammars.limits import GrammarLimits
from loomlm.grammars.token_index import EOS_STATE
from loomlm.grammars.vocabulary import Vocabulary

FINISHED = EOS_STATE
_MAX_FORCED = 256  # longest forced continuation returned at once
_MAX_CACHED_MASKS = 8192

Pairs = frozenset  # of (Column, lexer state or FRESH)


class CFGGuide:
    """A grammar over `vocab`, within `limits`; see the module docstring."""

    def __init__(self, grammar: CompiledGrammar, vocab: Vocabulary, limits: GrammarLimits, description: str):
        self.grammar = grammar
        self.vocab = vocab
        self.limits = limits
        self.description = description
        self._pairs: list[Pairs] = []
        self._ids: dict[Pairs, int] = {}
        self._steps: dict[tuple[int, int], int] = {}
        self._masks: dict[int, np.ndarray] = {}
        self._forced: dict[int, bytes] = {}
        self._eos = np.array(sorted(vocab.eos_token_ids), dtype=np.int64)
        self.masks = MaskBuilder(self)
        self.state_of(frozenset(((grammar.initial, FRESH),)))

    # ---- states ----------------------------------------------------------------------------------
    @property
    def initial_state(self) -> int:
        return 0

    @property
    def num_states(self) -> int:
        return len(self._pairs)

    def state_of(self, pairs: Pairs) -> int:
        sid = self._ids.get(pairs)
        if sid is None:
            if len(pairs) > self.limits.max_parser_items:
                raise GrammarError(
                    f"{self.description}: more than {self.limits.max_parser_items} ways to split the output "
                    "into terminals (GrammarLimits.max_parser_items)"
                )
            sid = self._ids[pairs] = len(self._pairs)
            self._pairs.append(pairs)
        return sid

    def next_columns(self, col: Column, tids: tuple[int, ...]) -> list[Column]:
        """Columns after a lexeme that terminals `tids` all accept ends in `col`: one column scanning
        them together (Earley's column at that position, so parses that differ only in which terminal
        matched stay one state), plus `col` itself when one of them is an %ignore terminal."""
        got = col._scans.get(tids)
        if got is None:
            nxt = self.grammar.scan_all(col, tuple(t for t in tids if t not in self.grammar.ignore))
            got = ([col] if any(t in self.grammar.ignore for t in tids) else []) + ([nxt] if nxt else [])
            col._scans[tids] = got
        return got

    def step(self, sid: int, b: int) -> int:
        """The state after byte `b` (-1: no parse survives)."""
        key = (sid, b)
        got = self._steps.get(key)
        if got is not None:
            return got
        grammar, lexer = self.grammar, self.grammar.lexer
        out = set()
        for col, lex in self._pairs[sid]:
            if lex == FRESH:
                start = grammar.lex_start(col)
                if start != DEAD and (nl := lexer.step(start, b)) >= 0:
                    out.add((col, nl))
                continue
            if (nl := lexer.step(lex, b)) >= 0:
                out.add((col, nl))
            if lexer.accepts[lex]:
                for nxt in self.next_columns(col, lexer.accepts[lex]):
                    start = grammar.lex_start(nxt)
                    if start != DEAD and (nl := lexer.step(start, b)) >= 0:
                        out.add((nxt, nl))
        got = self.state_of(frozenset(out)) if out else -1
        self._steps[key] = got
        return got

    def step_bytes(self, sid: int, data: bytes) -> int:
        steps = self._steps
        for b in data:
            nxt = steps.get((sid, b))
            sid = self.step(sid, b) if nxt is None else nxt
            if sid < 0:
                return -1
        return sid

    def _pair_accepting(self, col: Column, lex: int) -> bool:
        if lex == FRESH:
            return col.accepting
        return any(nxt.accepting for nxt in self.next_columns(col, self.grammar.lexer.accepts[lex]))

    # ---- the Guide protocol ----------------------------------------------------------------------
    def advance(self, state: int, token_id: int) -> int:
        if state == FINISHED:
            return REJECTED
        if token_id in self.vocab.eos_token_ids:
            return FINISHED if self.is_accepting(state) else REJECTED
        data = self.vocab.token_bytes[token_id] if 0 <= token_id < self.vocab.size else b""
        if not data:
            return REJECTED
        nxt = self.step_bytes(state, data)
        return REJECTED if nxt < 0 else nxt

    def fill_bitmask(self, state: int, out: np.ndarray) -> None:
        out[:] = self.mask_row(state)

    def mask_row(self, state: int) -> np.ndarray:
        """Packed int32 [ceil(V/32)] allowed-token row of `state` (cached; do not modify)."""
        if state == FINISHED:
            return np.zeros(bitmask_words(self.vocab.size), dtype=np.int32)
        row = self._masks.get(state)
        if row is None:
            self.masks.fuel = 0
            rows = [self.masks.pair_row(col, lex) for col, lex in self._pairs[state]]
            row = rows[0].copy() if len(rows) == 1 else np.bitwise_or.reduce(rows)
            if self.is_accepting(state) and len(self._eos):
                np.bitwise_or.at(row, self._eos >> 5, (1 << (self._eos & 31)).astype(np.uint32).view(np.int32))
            if len(self._masks) >= _MAX_CACHED_MASKS:
                self._masks.clear()
            self._masks[state] = row
        return row

    def mask_key(self, state: int) -> Hashable:
        return state

    def is_accepting(self, state: int) -> bool:
        return state == FINISHED or any(self._pair_accepting(c, lex) for c, lex in self._pairs[state])

    def is_finished(self, state: int) -> bool:
        return state == FINISHED or (self.is_accepting(state) and not self.next_bytes(state).any())

    def forced_bytes(self, state: int) -> bytes:
        if state == FINISHED:
            return b""
        got = self._forced.get(state)
        if got is not None:
            return got
        out = bytearray()
        sid = state
        while len(out) < _MAX_FORCED and not self.is_accepting(sid):
            allowed = np.flatnonzero(self.next_bytes(sid))
            if len(allowed) != 1:
                break
            out.append(int(allowed[0]))
            sid = self.step(sid, int(allowed[0]))
        got = self._forced[state] = bytes(out)
        return got

    def next_bytes(self, state: int) -> np.ndarray:
        """Bool [256]: the bytes that may come next."""
        grammar, lexer = self.grammar, self.grammar.lexer
        ok = np.zeros(256, dtype=bool)
        for col, lex in self._pairs[state]:
            starts = []
            if lex == FRESH:
                starts.append(grammar.lex_start(col))
            else:
                ok |= lexer.row(lex) >= 0
                starts += [grammar.lex_start(n) for n in self.next_columns(col, lexer.accepts[lex])]
            for s in starts:
                if s != DEAD:
                    ok |= lexer.row(s) >= 0
        return ok

    # ---- conveniences (tests, tools) -------------------------------------------------------------
    def allowed_tokens(self, state: int) -> np.ndarray:
        row = self.mask_row(state)
        return np.unpackbits(row.view(np.uint8), bitorder="little")[: self.vocab.size].astype(bool)

    def matches(self, text: str | bytes) -> bool:
        data = text.encode("utf-8") if isinstance(text, str) else text
        sid = self.step_bytes(0, data) if data else 0
        return sid >= 0 and self.is_accepting(sid)


def compile_cfg(
    grammar: Grammar,
    vocab: Vocabulary,
    limits: GrammarLimits | None = None,
    description: str = "",
    lazy_terminals: bool = False,
) -> CFGGuide:
    """`grammar` as a guide; `lazy_terminals`: see `earley.compile_grammar`."""
    limits = limits or GrammarLimits()
    compiled = compile_grammar(grammar, limits, lazy_terminals)
    return CFGGuide(compiled, vocab, limits, description or f"grammar with start rule {grammar.start!r}")


def compile_ebnf(text: str, vocab: Vocabulary, limits: GrammarLimits | None = None, start: str = "start") -> CFGGuide:
    """An EBNF grammar as a guide: GBNF (`name ::= ...`, llama.cpp's and XGrammar's dialect, start rule
    `root`; `gbnf.gbnf_grammar`) or lark's dialect (`name: ...`, start rule `start`; `ebnf.ebnf_grammar`)."""
    from loomlm.grammars.ebnf import ebnf_grammar
    from loomlm.grammars.gbnf import gbnf_grammar, looks_like_gbnf

    if isinstance(text, str) and looks_like_gbnf(text):
        grammar = gbnf_grammar(text, "root" if start == "start" else start)
        return compile_cfg(grammar, vocab, limits, f"GBNF grammar {text.strip()[:60]!r}")
    return compile_cfg(ebnf_grammar(text, start), vocab, limits, f"EBNF grammar {text.strip()[:60]!r}")
