"""Walks of the vocabulary against the grammar engine's lazy lexer: which tokens a lexer state lets
through, independent of the parser.

For a lexer state l, `TokenWalks.walk(l)` is a `LexWalk`: the packed row of tokens whose bytes all
stay inside the current lexeme (`inside`), and boundary records (token position, byte offset, lexer
state there) where the lexeme may end inside a token, grouped by that state. `continuation(source,
state, start)` walks the tokens of one such group on from the start state of the next lexeme, giving
another `LexWalk` of the same shape; the mask builder (`cfg_masks`) chains them at a parser column.
Everything is cached per lexer states, so the parser's columns share it.

Walks are vectorised over a lexicographic token table (`TokenTable`) with numpy: a state's walk
starts from the ranges of tokens its live first bytes begin (`bucket_walk`, cached per state after
the first byte), descends the table byte by byte while the lexer reads few bytes (`_descend`, the
inside of a literal key), gathers one byte position at a time from the lexer's transition table
(`lex_walk`, dead tokens dropped as they die) and steps a handful of tokens one by one. Lexer states
are expanded the first time a walk reaches them; work is charged to the caller's fuel.

Sharing: a walk depends on a terminal's term, not on which terminal it is, so single-terminal walks
are computed under the `ANONYMOUS` terminal and renamed (`_named`): the string values of many
properties walk once, and every object's extra key (any string minus that object's names) shares the
walk of a plain string once its first byte starts none of the names. Records of whole token ranges
stay ranges (`LexWalk.spans`), split by binary search when continued. A state of several terminals is
walked and continued part by part (`parts`), so a new set of remaining keys reuses each key's walks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from loomlm.grammars.guide_protocol import bitmask_words
from loomlm.grammars.lexer import ANONYMOUS, UNEXPANDED, Lexer
from loomlm.grammars.vocabulary import Vocabulary

_FEW_BYTES = 4  # a lexer state reading at most this many bytes is walked down the token table
_SMALL_RANGE = 16  # ... until its range of tokens is this small
_FEW_TOKENS = 24  # walks of at most this many tokens step them one by one


@dataclass(frozen=True)
class TokenTable:
    """The vocabulary's non-empty, non-EOS tokens in byte-lexicographic order, so that the tokens
    starting with one byte, or with one pair of bytes, are a contiguous range (the walk of a lexer state
    starts from the ranges of its live first bytes only, not from the whole vocabulary)."""

    ids: np.ndarray  # [n] int64 token ids
    lens: np.ndarray  # [n] int64
    data: np.ndarray  # [n, max_len] uint8, zero padded
    raw: tuple[bytes, ...]  # raw[k] = bytes of ids[k]
    columns: np.ndarray  # [max_len, n] uint8: data transposed, so that byte j of a range is contiguous
    # starts[b0 * 257 + j]: first position whose (first byte, j) >= (b0, j), where j is 0 for the one-byte
    # token b0 and 1 + the second byte otherwise; [256 * 257 + 1] int64
    starts: np.ndarray


def token_table(vocab: Vocabulary) -> TokenTable:
    got = vocab._cache.get("cfg_tokens")
    if got is None:
        pairs = sorted((b, i) for i, b in enumerate(vocab.token_bytes) if b and i not in vocab.eos_token_ids)
        ids = np.array([i for _, i in pairs], dtype=np.int64)
        raw = tuple(b for b, _ in pairs)
        lens = np.array([len(b) for b in raw], dtype=np.int64)
        width = int(lens.max()) if len(lens) else 1
        data = np.zeros((len(ids), max(width, 2)), dtype=np.uint8)
        for k, b in enumerate(raw):
            data[k, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        second = np.where(lens >= 2, data[:, 1].astype(np.int64) + 1, 0)
        key = data[:, 0].astype(np.int64) * 257 + second  # non-decreasing in lexicographic order
        starts = np.searchsorted(key, np.arange(256 * 257 + 1), side="left")
        got = vocab._cache["cfg_tokens"] = TokenTable(ids, lens, data, raw, np.ascontiguousarray(data.T), starts)
    return got


_NONE = np.zeros(0, np.int64)
_NONE_ST = np.zeros(0, np.int32)
NO_TOKENS = np.zeros(0, np.int32)  # `inside` of a continuation that holds no token to its end (not ORed)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The positions of the ranges [lo[i], hi[i]) concatenated (int64)."""
    n = hi - lo
    keep = n > 0
    lo, n = lo[keep], n[keep]
    if not len(n):
        return np.zeros(0, np.int64)
    ends = np.cumsum(n)
    return np.repeat(lo - (ends - n), n) + np.arange(int(ends[-1]))


@dataclass
class LexWalk:
    """A walk of a lexer state or a continuation: `inside` (packed row of the tokens it holds to their
    end; `NO_TOKENS` for none in a continuation) and the boundary records (token position, byte
    offset, accepting lexer state there), sorted by state; `by_state[s]` = (start, end) of its group."""

    inside: np.ndarray
    rec_pos: np.ndarray
    rec_off: np.ndarray
    rec_st: np.ndarray
    by_state: dict[int, tuple[int, int]]
    # spans[s] = (lo, hi, off) int64 arrays: more records of state s, as whole ranges of the token table
    # that share their first `off` bytes (a literal's prefix, `, ` before every token starting with a
    # space), kept as ranges so that a continuation splits them by binary search; every state of spans
    # is in by_state, with an empty range when it has no single records
    spans: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)


def _grouped(inside: np.ndarray, ids: np.ndarray, rec_pos: np.ndarray, rec_off: np.ndarray, rec_st) -> LexWalk:
    """A LexWalk of the `inside` row and the records of tokens it does not already allow (records are
    made at accepting states only, so every group's state can end a lexeme)."""
    if len(rec_pos) <= _FEW_TOKENS:  # the same, in Python: cheaper than a dozen numpy calls
        bits = inside.view(np.uint32) if len(inside) else None
        recs = sorted(
            (st, p, o)
            for p, o, st in zip(rec_pos.tolist(), rec_off.tolist(), rec_st.tolist())
            if bits is None or not (int(bits[ids[p] >> 5]) >> (int(ids[p]) & 31)) & 1
        )
        by_state: dict[int, tuple[int, int]] = {}
        for k, (st, _, _) in enumerate(recs):
            a, _ = by_state.get(st, (k, k))
            by_state[st] = (a, k + 1)
        column = lambda k, dtype: np.array([r[k] for r in recs], dtype)
        return LexWalk(inside, column(1, np.int64), column(2, np.int64), column(0, np.int32), by_state)
    if len(inside):
        tid = ids[rec_pos]
        allowed = (inside.view(np.uint32)[tid >> 5] >> (tid & 31).astype(np.uint32)) & 1
        order = np.flatnonzero(allowed == 0)  # tokens already allowed need no boundary check
    else:
        order = np.arange(len(rec_pos))
    order = order[np.argsort(rec_st[order], kind="stable")]
    rec_pos, rec_off, rec_st = rec_pos[order], rec_off[order], rec_st[order]
    if not len(rec_st):
        return LexWalk(inside, rec_pos, rec_off, rec_st, {})
    cuts = np.flatnonzero(rec_st[1:] != rec_st[:-1]) + 1
    firsts, lasts = [0, *cuts.tolist()], [*cuts.tolist(), len(rec_st)]
    by_state = dict(zip(rec_st[firsts].tolist(), zip(firsts, lasts)))
    return LexWalk(inside, rec_pos, rec_off, rec_st, by_state)


def _add_spans(walk: LexWalk, spans: dict) -> None:
    walk.spans.update(spans)
    for st in spans:
        walk.by_state.setdefault(st, (0, 0))


def pack(ids: np.ndarray, size: int) -> np.ndarray:
    bits = np.zeros(bitmask_words(size) * 32, dtype=bool)
    bits[ids] = True
    return np.packbits(bits, bitorder="little").view(np.int32)


class TokenWalks:
    """The walks of one lexer over one vocabulary's token table, cached; `charge(units)` is called
    for the work done (the mask builder's fuel)."""

    def __init__(self, lexer: Lexer, vocab: Vocabulary, charge: Callable[[int], None]):
        self.lexer = lexer
        self.vocab_size = vocab.size
        self.tokens = token_table(vocab)
        self.charge = charge
        self.walks: dict[int, LexWalk] = {}
        self.buckets: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.continuations: dict[tuple[int, int, int], LexWalk | None] = {}
        self._parts: dict[int, tuple[int, ...]] = {}

    def continuation(self, source: LexWalk, state: int, start: int) -> LexWalk | None:
        """The tokens of `source` whose lexeme ends in `state`, walked on from the start state `start`
        of one terminal of the next lexeme: a LexWalk of those it holds to their end and of their further boundary
        records (None: no such token). Independent of the parser, so cached (walks live as long as
        this builder, so their ids are keys): many columns share what comes after a key, a value, a
        comma."""
        key = (id(source), state, start)
        got = self.continuations.get(key, False)
        if got is False:
            lexer, tt = self.lexer, self.tokens
            a, b = source.by_state[state]
            row = lexer.row(start)
            found = []
            if b > a:
                pos, off = source.rec_pos[a:b], source.rec_off[a:b]
                ok = row[tt.data[pos, off]] >= 0  # the next lexeme's first byte
                if ok.any():
                    pos, off = pos[ok], off[ok]
                    found.append(self.lex_walk(pos, off, np.full(len(pos), start, np.int32)))
            spans = source.spans.get(state)
            if spans is not None:
                found.append(self._descend(self._split(row, *spans)))
            got = self._assemble(found, NO_TOKENS) if found else None
            if got is not None and got.inside is NO_TOKENS and not got.by_state:
                got = None
            self.continuations[key] = got
        return got

    def _split(self, row: np.ndarray, lo: np.ndarray, hi: np.ndarray, off: np.ndarray) -> list:
        """Descent entries (state, offset, lo, hi) for the ranges [lo, hi) of tokens that share their
        first `off` bytes, split by the next byte, which lexer transition `row` must read (the first
        byte of a lexeme, so no boundary before it)."""
        columns, live = self.tokens.columns, np.flatnonzero(row >= 0)
        needles = live.astype(np.uint8)  # of the column's dtype: searchsorted then copies nothing
        entries = []
        for a, e, j in zip(lo.tolist(), hi.tolist(), off.tolist()):
            column = columns[j, a:e]  # sorted, and every token here is longer than j
            firsts = np.searchsorted(column, needles, side="left").tolist()
            lasts = np.searchsorted(column, needles, side="right").tolist()
            entries += [(int(row[b]), j + 1, a + x, a + y) for b, x, y in zip(live.tolist(), firsts, lasts) if x < y]
        return entries

    def parts(self, lex: int) -> tuple[int, ...]:
        """The single-terminal states of lexer state `lex`'s terminals (cached)."""
        got = self._parts.get(lex)
        if got is None:
            pairs = self.lexer.states[lex]
            got = (lex,) if len(pairs) == 1 else tuple(self.lexer.state((p,)) for p in pairs)
            self._parts[lex] = got
        return got

    def walk(self, lex: int) -> LexWalk:
        """The walk of single-terminal lexer state `lex` (a state of several terminals is walked part by
        part: `parts`)."""
        got = self.walks.get(lex)
        if got is None:
            ((tid, term),) = self.lexer.states[lex]
            if tid == ANONYMOUS:
                got = self.single_walk(lex)
            else:
                got = self._named(tid, self.walk(self.lexer.state(((ANONYMOUS, term),))))
            self.walks[lex] = got
        return got

    def _named(self, tid: int, walk: LexWalk) -> LexWalk:
        """The walk of terminal `tid`'s state from the walk of the same term under `ANONYMOUS`: which
        tokens stay inside or cross depends on the term alone, so only the states of the boundary
        records are renamed. Terminals of one regex (the string values of many properties) and terms
        that become one after a byte (every object's extra key, once it is none of the declared names)
        share their walks this way."""
        lexer = self.lexer
        rec_st = np.empty_like(walk.rec_st)
        by_state, spans = {}, {}
        for anon, (a, b) in walk.by_state.items():
            state = lexer.state(((tid, lexer.states[anon][0][1]),))
            rec_st[a:b] = state
            by_state[state] = (a, b)
            if anon in walk.spans:
                spans[state] = walk.spans[anon]
        return LexWalk(walk.inside, walk.rec_pos, walk.rec_off, rec_st, by_state, spans)

    def single_walk(self, lex: int) -> LexWalk:
        """The walk of a one-terminal state: the union over its live first bytes b0 of the walk of the
        tokens starting with b0, from the state after b0 (`bucket_walk`, cached per (state, b0)). Most
        first bytes of a string-like state lead to one shared state (the open string), so a new state
        costs only its new buckets: the prefixes of an excluded key or an enum value, say. A state with
        few live bytes (inside a literal key, a keyword) descends the token table instead."""
        row = self.lexer.row(lex)
        live = np.flatnonzero(row >= 0)
        if len(live) <= _FEW_BYTES:
            return self.range_walk(row, live)
        parts = [self.bucket_walk(s1, b0) for b0, s1 in zip(live.tolist(), row[live].tolist())]
        ids = self.tokens.ids
        if not parts:
            return _grouped(np.zeros(bitmask_words(self.vocab_size), np.int32), ids, _NONE, _NONE, _NONE)
        cat = lambda k: np.concatenate([q[k] for q in parts]) if len(parts) > 1 else parts[0][k]
        return _grouped(pack(ids[cat(0)], self.vocab_size), ids, cat(1), cat(2), cat(3))

    def range_walk(self, row: np.ndarray, live: np.ndarray) -> LexWalk:
        """The walk of a state (transition `row`, `live` bytes) by descending the token table (`_descend`
        from the ranges of its live first bytes)."""
        starts = self.tokens.starts
        stack = [(int(row[b]), 1, int(starts[b * 257]), int(starts[b * 257 + 257])) for b in live.tolist()]
        return self._assemble([self._descend(stack)], None)

    def _descend(self, stack: list[tuple[int, int, int, int]]) -> tuple:
        """Walk ranges of tokens down the token table: an entry (state, j, lo, hi) is the tokens
        [lo, hi) that share their first j bytes, read into lexer state `state`. While the lexer reads
        few bytes the walk follows them byte by byte, two binary searches a byte, and hands a range to
        the vectorised `lex_walk` once it is small or the state reads many bytes: a literal's state
        costs about one step per byte of the literal, not a walk of every token starting with its next
        byte. Returns (inside positions, single records (pos, off, state), range records (lo, hi, off,
        state))."""
        lexer, tt = self.lexer, self.tokens
        inside: list[int] = []
        recs: list[tuple[int, int, int, int]] = []  # (lo, hi, offset, state): a boundary of a whole range
        rest: list[tuple[int, int, int, int]] = []  # ranges left to lex_walk
        while stack:
            s, j, lo, hi = stack.pop()
            if lo < hi and tt.lens[lo] == j:  # the token equal to the prefix sorts first in its range
                inside.append(lo)
                lo += 1
            if lo >= hi:
                continue
            self.charge(1)
            if lexer.accepts_any[s]:
                recs.append((lo, hi, j, s))
            nxt_row = lexer.row(s)
            nxt_live = np.flatnonzero(nxt_row >= 0)
            if hi - lo <= _SMALL_RANGE or len(nxt_live) > _FEW_BYTES:
                rest.append((lo, hi, j, s))
                continue
            column = tt.columns[j, lo:hi]  # sorted: every token here is longer than j
            needles = nxt_live.astype(np.uint8)
            firsts = np.searchsorted(column, needles, side="left").tolist()
            lasts = np.searchsorted(column, needles, side="right").tolist()
            for b, a, e in zip(nxt_live.tolist(), firsts, lasts):
                if a < e:
                    stack.append((int(nxt_row[b]), j + 1, lo + a, lo + e))
        found = np.array(inside, np.int64)
        if not rest:
            return found, _NONE, _NONE, _NONE_ST, recs
        spans = lambda xs: (np.array([x[0] for x in xs], np.int64), np.array([x[1] for x in xs], np.int64))
        fill = lambda xs, k, dtype: np.repeat(np.array([x[k] for x in xs], dtype), [x[1] - x[0] for x in xs])
        got = self.lex_walk(_ranges(*spans(rest)), fill(rest, 2, np.int64), fill(rest, 3, np.int32))
        return np.concatenate([found, got[0]]), got[1], got[2], got[3], recs

    def _assemble(self, found: list[tuple], empty: np.ndarray | None) -> LexWalk:
        """One LexWalk of the results of `lex_walk` and `_descend` (`empty`: the inside row when no
        token ends inside; None for an all-zero row)."""
        tt = self.tokens
        cat = lambda k, dtype: np.concatenate([f[k] for f in found]) if len(found) > 1 else found[0][k].astype(dtype)
        inside = cat(0, np.int64)
        if len(inside) or empty is None:
            row = pack(tt.ids[inside], self.vocab_size)
        else:
            row = empty
        walk = _grouped(row, tt.ids, cat(1, np.int64), cat(2, np.int64), cat(3, np.int32))
        ranges = [r for f in found if len(f) > 4 for r in f[4]]
        if ranges:
            by: dict[int, list] = {}
            for r in ranges:
                by.setdefault(r[3], []).append(r)
            col = lambda xs, k: np.array([x[k] for x in xs], np.int64)
            _add_spans(walk, {st: (col(xs, 0), col(xs, 1), col(xs, 2)) for st, xs in by.items()})
        return walk

    def bucket_walk(self, s1: int, b0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`lex_walk` of the tokens whose first byte is b0, from lexer state s1 at offset 1 (a boundary
        right after b0 is recorded too). When s1 cannot end a lexeme, only the tokens whose second byte
        s1 reads (and the one-byte token b0) are walked."""
        key = (s1, b0)
        got = self.buckets.get(key)
        if got is None:
            lexer, starts = self.lexer, self.tokens.starts
            base = b0 * 257
            if lexer.accepts_any[s1]:
                pos = np.arange(starts[base], starts[base + 257])
            else:
                at = base + 1 + np.flatnonzero(lexer.row(s1) >= 0)
                lo = np.concatenate([starts[base : base + 1], starts[at]])
                hi = np.concatenate([starts[base + 1 : base + 2], starts[at + 1]])
                pos = _ranges(lo, hi)
            n = len(pos)
            got = self.lex_walk(pos, np.ones(n, np.int64), np.full(n, s1, np.int32), record_start=True)
            self.buckets[key] = got
        return got

    def lex_walk(
        self, pos: np.ndarray, off: np.ndarray, st: np.ndarray, record_start: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Walk tokens (table positions `pos`) from byte offsets `off` in lexer states `st` to their
        ends: (positions that end inside a lexeme, and the boundary records (position, offset,
        accepting state) met after at least one byte of the lexeme: at the start too with
        `record_start`, for walks that begin after the lexeme's first byte)."""
        if len(pos) <= _FEW_TOKENS:
            return self._lex_walk_few(pos, off, st, record_start)
        lexer, tt = self.lexer, self.tokens
        inside: list[np.ndarray] = []
        recs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        first = not record_start
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

    def _lex_walk_few(
        self, pos: np.ndarray, off: np.ndarray, st: np.ndarray, record_start: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`lex_walk` of a few tokens, one at a time: a dozen numpy calls a byte cost more than these
        steps (continuations after a key or a value often hold a handful of tokens)."""
        lexer, raw, accepts = self.lexer, self.tokens.raw, self.lexer.accepts_any
        inside: list[int] = []
        recs: list[tuple[int, int, int]] = []
        self.charge(1)
        for p, o, s in zip(pos.tolist(), off.tolist(), st.tolist()):
            data, first = raw[p], not record_start
            while True:
                if o == len(data):
                    inside.append(p)
                    break
                if not first and accepts[s]:
                    recs.append((p, o, s))
                first = False
                s = lexer.step(s, data[o])
                if s < 0:
                    break
                accepts = lexer.accepts_any  # re-read: an expansion may have grown the arrays
                o += 1
        column = lambda k, dtype: np.array([r[k] for r in recs], dtype)
        return np.array(inside, np.int64), column(0, np.int64), column(1, np.int64), column(2, np.int32)
