"""Byte-level regular expressions as hash-consed terms with Brzozowski derivatives.

The lexer of the grammar engine builds its automaton lazily: a state is a term (or a tuple of terms,
one per candidate terminal), and the state after byte `b` is the derivative of the term by `b`. A
bounded repetition `x{0,2000}` is one node whose derivative is `d(x) . x{0,1999}`, so it costs one
state per position actually reached instead of 2000 copies built up front.

Terms are small ints into one `TermTable` (one per compiled grammar). Smart constructors keep them in a
canonical form (alternatives flattened, sorted and deduplicated, byte sets merged, `cat` right-nested,
the empty language and the empty string absorbed), which makes the set of derivatives of a regex
finite and lets equal languages of the common shapes share one id. `EMPTY` (0) matches nothing and is
the only term whose language is empty: no constructor here can build another one, so "state is dead"
is `term == EMPTY`.

Text regexes become terms in `regex_syntax`.
"""

from __future__ import annotations

import functools
from collections import deque

import numpy as np

from loomlm.grammars.errors import GrammarError

EMPTY = 0  # no string
EPS = 1  # the empty string
_ALL = (1 << 256) - 1

# node kinds
_K_EMPTY, _K_EPS, _K_BYTES, _K_CAT, _K_ALT, _K_STAR, _K_REP, _K_NONEMPTY, _K_AVOID, _K_MINUS, _K_LOOK = range(11)
_LIVE_BUDGET = 20000  # most derivative terms explored to decide whether a lookahead's term matches anything


def byte_bits(lo: int, hi: int) -> int:
    """The byte-set mask of bytes lo..hi."""
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


class TermTable:
    """Interned terms: `nodes[t]` is a tuple (kind, ...); `nullable[t]` whether t matches b""."""

    def __init__(self) -> None:
        self.nodes: list[tuple] = [(_K_EMPTY,), (_K_EPS,)]
        self.nullable: list[bool] = [False, True]
        self._ids: dict[tuple, int] = {(_K_EMPTY,): EMPTY, (_K_EPS,): EPS}
        self._deriv: dict[tuple[int, int], int] = {}
        self._front: dict[int, frozenset[int]] = {}
        self.memo: dict[tuple, int] = {}  # for builders of common sub-terms (regex_syntax's classes)
        self.looks: list[bool] = [False, False]  # looks[t]: a lookahead node is inside t
        self.has_looks = False  # any lookahead node at all (the lexer checks liveness only then)
        self._live: dict[int, bool] = {}

    def __len__(self) -> int:
        return len(self.nodes)

    def _intern(self, node: tuple, nullable: bool) -> int:
        t = self._ids.get(node)
        if t is None:
            t = self._ids[node] = len(self.nodes)
            self.nodes.append(node)
            self.nullable.append(nullable)
            kind, looks = node[0], self.looks
            if kind == _K_ALT:
                self.looks.append(any(looks[x] for x in node[1]))
            elif kind in (_K_CAT, _K_LOOK):
                self.looks.append(kind == _K_LOOK or looks[node[1]] or looks[node[2]])
            else:  # star, rep, nonempty, minus: one sub-term first; bytes and avoid: none
                self.looks.append(kind not in (_K_BYTES, _K_AVOID) and looks[node[1]])
        return t

    # ---- smart constructors ----------------------------------------------------------------------
    def byteset(self, mask: int) -> int:
        return EMPTY if mask == 0 else self._intern((_K_BYTES, mask), False)

    def literal(self, data: bytes) -> int:
        out = EPS
        for b in reversed(data):
            out = self.cat(self.byteset(1 << b), out)
        return out

    def cat(self, a: int, b: int) -> int:
        if a == EMPTY or b == EMPTY:
            return EMPTY
        if a == EPS:
            return b
        if b == EPS:
            return a
        node = self.nodes[a]
        if node[0] == _K_CAT:  # right-nested: (x y) z -> x (y z)
            return self.cat(node[1], self.cat(node[2], b))
        return self._intern((_K_CAT, a, b), self.nullable[a] and self.nullable[b])

    def seq(self, parts: list[int]) -> int:
        out = EPS
        for p in reversed(parts):
            out = self.cat(p, out)
        return out

    def alt(self, options: list[int] | tuple[int, ...]) -> int:
        flat: set[int] = set()
        mask = 0
        for o in options:
            node = self.nodes[o]
            if node[0] == _K_ALT:
                for x in node[1]:
                    if self.nodes[x][0] == _K_BYTES:
                        mask |= self.nodes[x][1]
                    else:
                        flat.add(x)
            elif node[0] == _K_BYTES:
                mask |= node[1]
            elif o != EMPTY:
                flat.add(o)
        if mask:
            flat.add(self.byteset(mask))
        if not flat:
            return EMPTY
        if len(flat) == 1:
            return next(iter(flat))
        if EPS in flat and any(self.nullable[x] for x in flat if x != EPS):
            flat.discard(EPS)
        items = tuple(sorted(flat))
        return self._intern((_K_ALT, items), any(self.nullable[x] for x in items))

    def star(self, a: int) -> int:
        if a in (EMPTY, EPS):
            return EPS
        node = self.nodes[a]
        if node[0] == _K_STAR:
            return a
        if node[0] == _K_NONEMPTY:
            return self.star(node[1])
        return self._intern((_K_STAR, a), True)

    def rep(self, a: int, lo: int, hi: int | None) -> int:
        """`a` lo..hi times (hi None: unbounded)."""
        if hi is not None and hi < lo:
            return EMPTY
        if hi == 0 or a == EPS:
            return EPS
        if a == EMPTY:
            return EPS if lo == 0 else EMPTY
        if self.nullable[a]:
            lo = 0
        if hi is None:
            if lo == 0:
                return self.star(a)
            return self.cat(self.rep(a, lo, lo), self.star(a))
        if lo == 1 and hi == 1:
            return a
        return self._intern((_K_REP, a, lo, hi), lo == 0)

    def nonempty(self, a: int) -> int:
        """The language of `a` without the empty string."""
        if not self.nullable[a]:
            return a
        if a == EPS:
            return EMPTY
        return self._intern((_K_NONEMPTY, a), False)

    def avoid(self, words: tuple[bytes, ...], tail: bytes = b"") -> int:
        """Any bytes that do not contain one of `words` (non-empty); `tail`: the longest suffix of what
        was read that is a proper prefix of a word (the Aho-Corasick state, kept in the node)."""
        return self._intern((_K_AVOID, words, tail), True)

    def minus(self, a: int, words: tuple[bytes, ...]) -> int:
        """The language of `a` without the strings `words` (a JSON key that is none of the declared
        names). Sound only where removing finitely many strings cannot empty a state's language, as
        for a quoted string: every derivative of it is EMPTY, EPS or infinite, and EPS minus "" is
        EMPTY here, so EMPTY stays the only term with an empty language."""
        if a == EMPTY or not words:
            return a
        if a == EPS:
            return EMPTY if b"" in words else EPS
        words = tuple(sorted(set(words)))
        return self._intern((_K_MINUS, a, words), self.nullable[a] and b"" not in words)

    def look(self, a: int, x: int, negative: bool) -> int:
        """The strings of `a` that start with a string of `x` (`negative`: that do not): a lookahead
        `(?=x)` / `(?!x)` whose continuation, the rest of the regex, is `a`. Such a term can match
        nothing without being EMPTY (`(?!a)a`); `live` tells, and the lexer drops dead states."""
        if a == EMPTY:
            return EMPTY
        if x == EMPTY:
            return a if negative else EMPTY
        if self.nullable[x]:  # every string starts with the empty one
            return EMPTY if negative else a
        self.has_looks = True
        return self._intern((_K_LOOK, a, x, negative), negative and self.nullable[a])

    def live(self, t: int) -> bool:
        """Whether term `t` matches some string: a breadth-first search of its derivatives for a
        nullable one (needed only where `looks[t]`: elsewhere a term other than EMPTY is live)."""
        got = self._live.get(t)
        if got is None:
            seen, todo = {t}, deque([t])
            got = False
            while todo and not got:
                u = todo.popleft()
                got = self.nullable[u]
                for rep, _ in [] if got else byte_classes(self.front(u)):
                    d = self.deriv(u, rep)
                    if d != EMPTY and d not in seen:
                        if len(seen) >= _LIVE_BUDGET:
                            raise GrammarError(
                                f"a lookahead makes more than {_LIVE_BUDGET} lexer terms to explore (regex too complex)"
                            )
                        seen.add(d)
                        todo.append(d)
            if got:
                self._live[t] = True
            else:  # everything reachable from a dead term is dead
                self._live.update(dict.fromkeys(seen, False))
        return got

    # ---- derivatives -----------------------------------------------------------------------------
    def deriv(self, t: int, b: int) -> int:
        key = (t, b)
        got = self._deriv.get(key)
        if got is not None:
            return got
        node = self.nodes[t]
        kind = node[0]
        if kind in (_K_EMPTY, _K_EPS):
            out = EMPTY
        elif kind == _K_BYTES:
            out = EPS if (node[1] >> b) & 1 else EMPTY
        elif kind == _K_CAT:
            first = self.cat(self.deriv(node[1], b), node[2])
            out = self.alt((first, self.deriv(node[2], b))) if self.nullable[node[1]] else first
        elif kind == _K_ALT:
            out = self.alt([self.deriv(x, b) for x in node[1]])
        elif kind == _K_STAR:
            out = self.cat(self.deriv(node[1], b), t)
        elif kind == _K_REP:
            _, a, lo, hi = node
            out = self.cat(self.deriv(a, b), self.rep(a, max(lo - 1, 0), hi - 1))
        elif kind == _K_AVOID:
            _, words, tail = node
            text = tail + bytes((b,))
            if any(text.endswith(w) for w in words):
                out = EMPTY
            else:
                keep = next((k for k in range(len(text)) if any(w.startswith(text[k:]) for w in words)), len(text))
                out = self.avoid(words, text[keep:])
        elif kind == _K_MINUS:
            _, a, words = node
            out = self.minus(self.deriv(a, b), tuple(w[1:] for w in words if w and w[0] == b))
        elif kind == _K_LOOK:
            _, a, x, negative = node
            out = self.look(self.deriv(a, b), self.deriv(x, b), negative)
        else:  # _K_NONEMPTY
            out = self.deriv(node[1], b)
        self._deriv[key] = out
        return out

    def front(self, t: int) -> frozenset[int]:
        """Byte masks that decide the first byte's derivative: bytes in the same cell of the
        partition they induce have equal derivatives."""
        got = self._front.get(t)
        if got is not None:
            return got
        node = self.nodes[t]
        kind = node[0]
        if kind in (_K_EMPTY, _K_EPS):
            out: frozenset[int] = frozenset()
        elif kind == _K_BYTES:
            out = frozenset((node[1],))
        elif kind == _K_CAT:
            out = self.front(node[1]) | self.front(node[2]) if self.nullable[node[1]] else self.front(node[1])
        elif kind == _K_ALT:
            out = frozenset().union(*(self.front(x) for x in node[1]))
        elif kind == _K_AVOID:
            out = frozenset(1 << c for w in node[1] for c in w)
        elif kind == _K_MINUS:
            out = self.front(node[1]) | frozenset(1 << w[0] for w in node[2] if w)
        elif kind == _K_LOOK:
            out = self.front(node[1]) | self.front(node[2])
        else:  # star, rep, nonempty
            out = self.front(node[1])
        self._front[t] = out
        return out


_MEMBERS: dict[int, np.ndarray] = {}


def _members(mask: int) -> np.ndarray:
    got = _MEMBERS.get(mask)
    if got is None:
        raw = np.frombuffer(mask.to_bytes(32, "little"), dtype=np.uint8)
        got = np.unpackbits(raw, bitorder="little").astype(bool)
        if len(_MEMBERS) < 65536:
            _MEMBERS[mask] = got
    return got


def byte_classes(masks: frozenset[int] | set[int]) -> list[tuple[int, np.ndarray]]:
    """Partition of 0..255 by membership in `masks`: [(representative byte, member bytes)]; bytes in
    no mask form one class too (their derivative is EMPTY). The member arrays are shared: read only."""
    return _byte_classes(frozenset(masks))


@functools.lru_cache(maxsize=8192)  # lexer states repeat their first-byte sets (a literal's next byte, a string's)
def _byte_classes(masks: frozenset[int]) -> list[tuple[int, np.ndarray]]:
    masks = [m for m in masks if m != _ALL]  # a full set splits nothing
    if not masks:
        return [(0, np.arange(256))]
    if len(masks) == 1:
        members = _members(masks[0])
        inside, outside = np.flatnonzero(members), np.flatnonzero(~members)
        return [(int(inside[0]), inside)] + ([(int(outside[0]), outside)] if len(outside) else [])
    signature = np.packbits(np.stack([_members(m) for m in masks]), axis=0)  # [ceil(k/8), 256]: byte b's
    keys = signature[0] if len(signature) == 1 else np.ascontiguousarray(signature.T).view(f"V{len(signature)}")
    _, first, inverse = np.unique(keys.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse.ravel()))[:-1])
    return [(int(first[k]), g) for k, g in enumerate(groups)]
