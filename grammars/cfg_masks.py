"""Token masks of the grammar guide: the lexer's token walks joined by the parser at boundaries.

A guide state is a set of (column, lexer state) pairs; its mask is the union of the pairs' masks. The
mask of one pair (C, l) splits into two parts:

1. Tokens whose bytes all stay inside the current lexeme. They depend on l alone, not on the parser
   (`token_walks.TokenWalks.walk(l).inside`), so they are shared by every column: an open string is
   walked once, however many string values the output has.
2. Tokens that cross a terminal boundary: at some byte the lexeme may end (the lexer state there
   accepts terminal T). For a column C each group of such tokens (by that lexer state) is checked
   once: T is scanned by the parser (`CFGGuide.next_columns`, cached per column) and the group's
   continuation from the next column's lexer start state (cached per lexer states) gives the tokens
   that end inside the next lexeme and, recursively, the groups that cross again. A boundary right
   at the start (l itself accepting) is the mask of the next column's fresh state.

A lexer state of several terminals is taken terminal by terminal (`TokenWalks.parts`): their lexemes
evolve independently, so the union of their rows is the row, and each terminal's walks and
continuations are shared by every column that allows it (an object's columns differ in the keys that
remain, not in how each key is lexed). Pair rows are cached per (column, lexer state). Work is
charged against `GrammarLimits.max_mask_fuel`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.guide_protocol import bitmask_words
from loomlm.grammars.lexer import DEAD
from loomlm.grammars.token_walks import NO_TOKENS, LexWalk, TokenWalks

if TYPE_CHECKING:
    from loomlm.grammars.cfg_guide import CFGGuide
    from loomlm.grammars.earley import Column

FRESH = -5  # lexer "state" of a pair at a lexeme boundary (the column's start state comes next)


class MaskBuilder:
    """Pair masks of one guide, cached per lexer state and per (column, lexer state)."""

    def __init__(self, guide: CFGGuide):
        self.guide = guide
        self.lexer = guide.grammar.lexer
        self.vocab_size = guide.vocab.size
        self.walks = TokenWalks(self.lexer, guide.vocab, self.charge)
        self.rows: dict[tuple[Column, int], np.ndarray] = {}
        self.fuel = 0

    def charge(self, units: int) -> None:
        self.fuel += units
        limit = self.guide.limits.max_mask_fuel
        if self.fuel > limit:
            raise GrammarError(
                f"one token mask of {self.guide.description} needs more than {limit} work units "
                "(GrammarLimits.max_mask_fuel)"
            )

    def pair_row(self, col: Column, lex: int) -> np.ndarray:
        key = (col, lex)
        row = self.rows.get(key)
        if row is not None:
            return row
        grammar, lexer, guide = self.guide.grammar, self.lexer, self.guide
        if lex == FRESH:
            start = grammar.lex_start(col)
            row = (
                self.pair_row_lexing(col, start)
                if start != DEAD
                else np.zeros(bitmask_words(self.vocab_size), np.int32)
            )
        else:
            row = self.pair_row_lexing(col, lex)
            if lexer.accepts[lex]:  # the lexeme may end before this token
                for nxt in guide.next_columns(col, lexer.accepts[lex]):
                    row = row | self.pair_row(nxt, FRESH)
        self.rows[key] = row
        return row

    def pair_row_lexing(self, col: Column, lex: int) -> np.ndarray:
        """The row of lexer state `lex` at `col`: the union over its terminals' own states (their
        lexemes evolve independently), whose walks and continuations every column shares."""
        rows: list[np.ndarray] = []
        for part in self.walks.parts(lex):
            walk = self.walks.walk(part)
            rows.append(walk.inside)
            if walk.by_state:
                self._cross(walk, col, rows)
        return rows[0] if len(rows) == 1 else np.bitwise_or.reduce(rows)

    def _cross(self, source: LexWalk, col: Column, rows: list[np.ndarray]) -> None:
        """Add to `rows` the tokens of `source`'s boundary records that the parser at `col` lets cross:
        per group (lexer state where a lexeme may end), each column after that lexeme and the
        continuation from its lexer start state, recursively for tokens with more boundaries. Only the
        scans depend on the column; the walks are cached per lexer states."""
        lexer, grammar, guide, walks = self.lexer, self.guide.grammar, self.guide, self.walks
        for state in source.by_state:
            for nxt in guide.next_columns(col, lexer.accepts[state]):
                start = grammar.lex_start(nxt)
                if start == DEAD:
                    continue
                for part in walks.parts(start):
                    cont = walks.continuation(source, state, part)
                    if cont is None:
                        continue
                    if cont.inside is not NO_TOKENS:
                        rows.append(cont.inside)
                    if cont.by_state:
                        self._cross(cont, nxt, rows)
