"""Token masks of the grammar guide: a vocabulary walk per lexer state plus the parser at boundaries.

A guide state is a set of (column, lexer state) pairs; its mask is the union of the pairs' masks. The
mask of one pair (C, l) splits into two parts:

1. Tokens whose bytes all stay inside the current lexeme (the walk from l never reaches DEAD and never
   needs a terminal to end). They depend on l alone, not on the parser, so they are computed once per
   lexer state (`LexWalk.inside`) and shared by every column: an open string is walked once, however
   many string values the output has.
2. Tokens that cross a terminal boundary: at some byte j the lexeme may end (the lexer state after j
   bytes accepts terminal T). The walk records them grouped by (state at j, remaining bytes); for a
   column C each group is checked once: T is scanned by the parser (`CompiledGrammar.scan`, cached per
   column) and the remaining bytes are stepped from the new column (`CFGGuide.step`, cached per state
   and byte). Groups whose first remaining byte cannot start a lexeme there are skipped unseen. A
   boundary right at the start (l itself accepting) is the mask of the next column's fresh state.

The walk is vectorised over the vocabulary with numpy (tokens sorted by length, one gather per byte
position from the lexer's transition table, dead tokens dropped as they die), expanding lexer states
the first time it reaches them. Work is charged against `GrammarLimits.max_mask_fuel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.guide_protocol import bitmask_words
from loomlm.grammars.lexer import DEAD, UNEXPANDED
from loomlm.grammars.vocabulary import Vocabulary

if TYPE_CHECKING:
    from loomlm.grammars.cfg_guide import CFGGuide
    from loomlm.grammars.earley import Column

FRESH = -5  # lexer "state" of a pair at a lexeme boundary (the column's start state comes next)


@dataclass(frozen=True)
class TokenTable:
    """The vocabulary's non-empty, non-EOS tokens sorted by byte length (longest first)."""

    ids: np.ndarray  # [n] int64 token ids
    lens: np.ndarray  # [n] int64
    data: np.ndarray  # [n, max_len] uint8, zero padded
    raw: tuple[bytes, ...]  # raw[k] = bytes of ids[k]


def token_table(vocab: Vocabulary) -> TokenTable:
    got = vocab._cache.get("cfg_tokens")
    if got is None:
        pairs = [(len(b), i) for i, b in enumerate(vocab.token_bytes) if b and i not in vocab.eos_token_ids]
        pairs.sort(key=lambda p: (-p[0], p[1]))
        ids = np.array([i for _, i in pairs], dtype=np.int64)
        lens = np.array([n for n, _ in pairs], dtype=np.int64)
        width = int(lens[0]) if len(lens) else 1
        data = np.zeros((len(ids), width), dtype=np.uint8)
        raw = tuple(vocab.token_bytes[i] for i in ids.tolist())
        for k, b in enumerate(raw):
            data[k, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        got = vocab._cache["cfg_tokens"] = TokenTable(ids, lens, data, raw)
    return got


@dataclass
class LexWalk:
    """Per lexer state: `inside` (packed row of tokens staying in the lexeme) and the boundary records
    (token position, byte offset, lexer state there), sorted by state; `by_state[s]` = (start, end)."""

    inside: np.ndarray
    rec_pos: np.ndarray
    rec_off: np.ndarray
    by_state: dict[int, tuple[int, int]]


def pack(ids: np.ndarray, size: int) -> np.ndarray:
    bits = np.zeros(bitmask_words(size) * 32, dtype=bool)
    bits[ids] = True
    return np.packbits(bits, bitorder="little").view(np.int32)


class MaskBuilder:
    """Pair masks of one guide, cached per lexer state and per (column, lexer state)."""

    def __init__(self, guide: CFGGuide):
        self.guide = guide
        self.lexer = guide.grammar.lexer
        self.vocab_size = guide.vocab.size
        self.tokens = token_table(guide.vocab)
        self.walks: dict[int, LexWalk] = {}
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
            for tid in lexer.accepts[lex]:  # the lexeme may end before this token
                for nxt in guide.next_columns(col, tid):
                    row = row | self.pair_row(nxt, FRESH)
        self.rows[key] = row
        return row

    def pair_row_lexing(self, col: Column, lex: int) -> np.ndarray:
        walk = self.walk(lex)
        lexer, grammar, guide, tt = self.lexer, self.guide.grammar, self.guide, self.tokens
        found: list[np.ndarray] = []
        for state, (a, b) in walk.by_state.items():
            for tid in lexer.accepts[state]:
                for nxt in guide.next_columns(col, tid):
                    start = grammar.lex_start(nxt)
                    if start == DEAD:
                        continue
                    pos, off = walk.rec_pos[a:b], walk.rec_off[a:b]
                    ok = lexer.row(start)[tt.data[pos, off]] >= 0  # the next lexeme's first byte
                    if not ok.any():
                        continue
                    pos, off = pos[ok], off[ok]
                    inside, rec_pos, _, _ = self.lex_walk(pos, off, np.full(len(pos), start, np.int32))
                    found.append(inside)
                    if len(rec_pos):  # another boundary inside the token: the exact, slower check
                        first_off = dict(zip(pos.tolist(), off.tolist()))
                        fresh = guide.state_of(frozenset(((nxt, FRESH),)))
                        done = set(inside.tolist())
                        raw = tt.raw
                        todo = [p for p in dict.fromkeys(rec_pos.tolist()) if p not in done]
                        self.charge(len(todo))
                        hits = [p for p in todo if guide.step_bytes(fresh, raw[p][first_off[p] :]) >= 0]
                        if hits:
                            found.append(np.array(hits, dtype=np.int64))
        if not found:
            return walk.inside
        return walk.inside | pack(tt.ids[np.concatenate(found)], self.vocab_size)

    def walk(self, lex: int) -> LexWalk:
        got = self.walks.get(lex)
        if got is None:
            n = len(self.tokens.ids)
            inside, rec_pos, rec_off, rec_st = self.lex_walk(
                np.arange(n), np.zeros(n, np.int64), np.full(n, lex, np.int32)
            )
            row = pack(self.tokens.ids[inside], self.vocab_size)
            keep = ~np.isin(rec_pos, inside)  # tokens already allowed need no boundary check
            rec_pos, rec_off, rec_st = rec_pos[keep], rec_off[keep], rec_st[keep]
            order = np.argsort(rec_st, kind="stable")
            rec_pos, rec_off, rec_st = rec_pos[order], rec_off[order], rec_st[order]
            states, starts, counts = np.unique(rec_st, return_index=True, return_counts=True)
            by_state = {int(s): (int(a), int(a + c)) for s, a, c in zip(states, starts, counts)}
            got = self.walks[lex] = LexWalk(row, rec_pos, rec_off, by_state)
        return got

    def lex_walk(
        self, pos: np.ndarray, off: np.ndarray, st: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Walk tokens (table positions `pos`) from byte offsets `off` in lexer states `st` to their
        ends: (positions that end inside a lexeme, and the boundary records (position, offset,
        accepting state) met after at least one byte)."""
        lexer, tt = self.lexer, self.tokens
        inside: list[np.ndarray] = []
        recs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        first = True
        while len(pos):
            ended = tt.lens[pos] == off
            if ended.any():
                inside.append(pos[ended])
                keep = ~ended
                pos, off, st = pos[keep], off[keep], st[keep]
                if not len(pos):
                    break
            if not first:
                acc = lexer.accepts_any[st]
                if acc.any():
                    recs.append((pos[acc], off[acc], st[acc]))
            first = False
            self.charge(len(pos) // 256 + 1)
            b = tt.data[pos, off]
            nxt = lexer.table[st, b]
            missing = nxt == UNEXPANDED
            if missing.any():
                for s in np.unique(st[missing]).tolist():
                    lexer.expand(s)
                nxt = lexer.table[st, b]
            alive = nxt >= 0
            pos, off, st = pos[alive], off[alive] + 1, nxt[alive]
        empty = np.zeros(0, np.int64)
        cat = lambda xs, k: np.concatenate([x[k] for x in xs]) if xs else empty
        return (np.concatenate(inside) if inside else empty), cat(recs, 0), cat(recs, 1), cat(recs, 2)
