"""Text regexes -> byte terms (`regex_terms.TermTable`) for the grammar engine's lazy lexer.

The text is read by Python's own regex parser (`re._parser`, `sre_parse` before 3.11), the one that
`re.compile` runs: it validates the syntax with `re`'s own error messages and is several times faster
than interegular on the long regexes a JSON schema produces (an "any key but these 70" regex is 13 KB).
Its tree is lowered here: literals and classes become unions of UTF-8 byte-range sequences (`utf8`),
`|`, groups and repetitions the table's constructors. `\\d`, `\\s`, `\\w` are the ASCII classes (as in
interegular and JSON-schema patterns), `(?i)` folds case, `.` excludes the newline unless `(?s)`.
Lookaheads `(?=x)` / `(?!x)` are read with Python's meaning (they see the rest of the input): the
lowering passes each item the term of what follows it, and the lookahead becomes a
`TermTable.look` node over that continuation (not inside a repetition or another lookahead).
Anchors, lookbehinds, backreferences, atomic groups and possessive repeats are refused with a
`GrammarError` naming them (an automaton cannot read them, or they change what matches).

A literal (escaped metacharacters allowed) with an optional trailing " ?" skips the parser: most
terminals of a JSON schema (`"key": ?`, enum values) have that form.
"""

from __future__ import annotations

import functools
import re

try:
    from re import _constants as _C  # Python >= 3.11
    from re import _parser as _P
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _P  # type: ignore[no-redef]

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.regex_terms import EPS, TermTable, byte_bits
from loomlm.grammars.utf8 import complement, utf8_sequences

LITERAL = re.compile(r"((?:[^\\\[\](){}|*+?.^$]|\\[^A-Za-z0-9])*)( \?)?")

_CATEGORIES = {
    _C.CATEGORY_DIGIT: ((0x30, 0x39),),
    _C.CATEGORY_SPACE: ((0x09, 0x0D), (0x20, 0x20)),
    _C.CATEGORY_WORD: ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
}
_NOT_CATEGORIES = {
    _C.CATEGORY_NOT_DIGIT: _C.CATEGORY_DIGIT,
    _C.CATEGORY_NOT_SPACE: _C.CATEGORY_SPACE,
    _C.CATEGORY_NOT_WORD: _C.CATEGORY_WORD,
}
_REFUSED = {
    _C.AT: "anchors (^, $, \\b, \\A, \\Z) are not supported",
    _C.GROUPREF: "backreferences are not supported",
    _C.GROUPREF_EXISTS: "conditional groups are not supported",
}
for _name in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):
    if hasattr(_C, _name):
        _REFUSED[getattr(_C, _name)] = "atomic groups and possessive repeats are not supported"
_REPEATS = (_C.MAX_REPEAT, _C.MIN_REPEAT)


def regex_term(table: TermTable, pattern: str, *, ignore_case: bool = False) -> int:
    """The byte term of a Python-`re` regex (clear GrammarError on what cannot be lexed)."""
    literal = None if ignore_case else LITERAL.fullmatch(pattern)
    if literal is not None:
        body = re.sub(r"\\(.)", r"\1", literal.group(1), flags=re.DOTALL).encode()
        parts = [table.byteset(1 << b) for b in body]
        if literal.group(2):
            parts.append(table.rep(table.byteset(1 << 0x20), 0, 1))
        return table.seq(parts)
    tree, flags, _ = _parse(pattern)
    lowering = _Lowering(table, pattern)
    return lowering.seq(tree, ignore_case or bool(flags & re.IGNORECASE), bool(flags & re.DOTALL))


# A first item that is one mandatory character: a plain or escaped punctuation character, unquantified.
_MANDATORY_FIRST = re.compile(r"(?:[^\\\[\](){}|*+?.^$]|\\[^A-Za-z0-9])(?![?*{])")
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_CLASS = re.compile(r"\[\^?\]?[^\]]*\]")
_GROUP = re.compile(r"\([^()]*\)")


def surely_nonempty(pattern: str) -> bool:
    """True when `pattern` cannot match the empty string because it is a concatenation (no top-level
    `|`) whose first item is one mandatory character, decided without parsing it: the compiler's
    own regexes (a JSON key with its colon, a string with a pattern) are mostly of this shape, and
    parsing a large one only to learn that costs more than the rest of the compile. False: unknown."""
    if not _MANDATORY_FIRST.match(pattern):
        return False
    if "|" not in pattern:
        return True
    rest = _CLASS.sub("", _ESCAPE.sub("e", pattern))
    while True:  # innermost groups first, one nesting level a pass
        shorter = _GROUP.sub("", rest)
        if shorter == rest:
            break
        rest = shorter
    # anything left of a group or class means this reading was wrong: no answer
    return not any(c in rest for c in "|()[]")


def matches_empty(pattern: str) -> bool:
    """Whether the regex matches the empty string (GrammarError if it is invalid); no term is built."""
    literal = LITERAL.fullmatch(pattern)
    if literal is not None:
        return not literal.group(1)
    return _parse(pattern)[2] == 0


@functools.lru_cache(maxsize=2048)  # the parse tree is read, never changed; the same regexes recur
def _parse(pattern: str) -> tuple[list, int, int]:
    """(top-level items, global flags, minimum match length) of `pattern`."""
    if not isinstance(pattern, str):
        raise GrammarError(f"a regex must be a string, got {type(pattern).__name__}")
    try:
        tree = _P.parse(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise GrammarError(f"invalid regex {pattern!r}: {exc}") from None
    return list(tree), int(tree.state.flags), tree.getwidth()[0]


class _Lowering:
    def __init__(self, table: TermTable, pattern: str):
        self.t = table
        self.pattern = pattern

    def fail(self, why: str) -> GrammarError:
        return GrammarError(f"regex {self.pattern!r}: {why}")

    def seq(self, items, icase: bool, dotall: bool, then: int = EPS) -> int:
        """The term of `items` followed by `then`, the rest of the regex after them: what a lookahead
        among them sees (Python's `(?=x)` / `(?!x)` look at the whole remaining input)."""
        if not _has_lookahead(items):
            body = self.t.seq([self.node(op, av, icase, dotall) for op, av in items])
            return body if then == EPS else self.t.cat(body, then)
        out = then
        for op, av in reversed(items):
            out = self.node_then(op, av, icase, dotall, out)
        return out

    def node_then(self, op, av, icase: bool, dotall: bool, then: int) -> int:
        """One item followed by `then` (an item without a lookahead is its own term, then `then`)."""
        t = self.t
        if not _has_lookahead(((op, av),)):
            return t.cat(self.node(op, av, icase, dotall), then)
        if op in (_C.ASSERT, _C.ASSERT_NOT):
            direction, body = av
            if direction != 1:
                raise self.fail("lookbehinds are not supported")
            if _has_lookahead(body):
                raise self.fail("a lookahead inside a lookahead is not supported")
            return t.look(then, self.seq(body, icase, dotall), negative=op is _C.ASSERT_NOT)
        if op is _C.BRANCH:
            return t.alt([self.seq(branch, icase, dotall, then) for branch in av[1]])
        if op is _C.SUBPATTERN:
            icase, dotall = self.flags(av, icase, dotall)
            return self.seq(av[3], icase, dotall, then)
        if op in _REPEATS:
            raise self.fail("a lookahead inside a repetition is not supported")
        return t.cat(self.node(op, av, icase, dotall), then)

    def flags(self, av, icase: bool, dotall: bool) -> tuple[bool, bool]:
        _group, on, off, _body = av
        if (on | off) & ~(re.IGNORECASE | re.DOTALL | re.MULTILINE | re.VERBOSE | re.UNICODE | re.ASCII):
            raise self.fail("only the inline flags i, s, m, x are supported")
        icase = (icase or bool(on & re.IGNORECASE)) and not off & re.IGNORECASE
        dotall = (dotall or bool(on & re.DOTALL)) and not off & re.DOTALL
        return icase, dotall

    def node(self, op, av, icase: bool, dotall: bool) -> int:
        t = self.t
        if op in (_C.ASSERT, _C.ASSERT_NOT):
            raise self.fail("lookarounds are not supported here")  # seq() handles them
        if op is _C.LITERAL:
            return self.chars([(av, av)], False, icase)
        if op is _C.NOT_LITERAL:
            return self.chars([(av, av)], True, icase)
        if op is _C.ANY:
            return self.chars([] if dotall else [(0x0A, 0x0A)], True, False)
        if op is _C.IN:
            return self.char_class(av, icase)
        if op is _C.BRANCH:
            return t.alt([self.seq(branch, icase, dotall) for branch in av[1]])
        if op is _C.SUBPATTERN:
            icase, dotall = self.flags(av, icase, dotall)
            return self.seq(av[3], icase, dotall)
        if op in _REPEATS:
            lo, hi, body = av
            return t.rep(self.seq(body, icase, dotall), lo, None if hi == _C.MAXREPEAT else hi)
        if op in _REFUSED:
            raise self.fail(_REFUSED[op])
        raise self.fail(f"unsupported construct {op}")

    def char_class(self, items, icase: bool) -> int:
        negated = bool(items) and items[0][0] is _C.NEGATE
        ranges: list[tuple[int, int]] = []
        for op, av in items[1:] if negated else items:
            if op is _C.LITERAL:
                ranges.append((av, av))
            elif op is _C.RANGE:
                ranges.append(av)
            elif op is _C.CATEGORY and av in _CATEGORIES:
                ranges += _CATEGORIES[av]
            elif op is _C.CATEGORY and av in _NOT_CATEGORIES:
                ranges += complement(list(_CATEGORIES[_NOT_CATEGORIES[av]]))
            else:
                raise self.fail(f"unsupported class item {op} {av}")
        return self.chars(ranges, negated, icase)

    def chars(self, ranges: list[tuple[int, int]], negated: bool, icase: bool) -> int:
        """Any one character of `ranges` (of the others when `negated`) as UTF-8 bytes."""
        if icase:
            ranges = ranges + _case_variants(ranges)
        ranges = _merged(ranges)
        if negated:
            ranges = complement(ranges)
        key = ("chars", tuple(ranges))
        got = self.t.memo.get(key)
        if got is None:
            t = self.t
            ascii_bits = 0
            for lo, hi in ranges:
                if lo < 0x80:
                    ascii_bits |= byte_bits(lo, min(hi, 0x7F))
            wide = [(max(lo, 0x80), hi) for lo, hi in ranges if hi >= 0x80]
            options = [t.byteset(ascii_bits)] if ascii_bits else []
            if wide:  # the non-ASCII part is shared by many classes ([^"], [^,], ...): one term
                options.append(self.wide(tuple(wide)))
            got = self.t.memo[key] = t.alt(options)
        return got

    def wide(self, ranges: tuple[tuple[int, int], ...]) -> int:
        key = ("wide", ranges)
        got = self.t.memo.get(key)
        if got is None:
            t = self.t
            got = t.alt([t.seq([t.byteset(byte_bits(lo, hi)) for lo, hi in s]) for s in utf8_sequences(list(ranges))])
            self.t.memo[key] = got
        return got


def _has_lookahead(items) -> bool:
    """Whether a parsed sequence holds a lookaround anywhere (classes aside)."""
    for op, av in items:
        if op in (_C.ASSERT, _C.ASSERT_NOT):
            return True
        if op is _C.BRANCH and any(_has_lookahead(b) for b in av[1]):
            return True
        if op is _C.SUBPATTERN and _has_lookahead(av[3]):
            return True
        if op in _REPEATS and _has_lookahead(av[2]):
            return True
    return False


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _case_variants(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The other-case code points of the characters in `ranges` (per character up to 4096 of them;
    beyond that only ASCII letters)."""
    out = []
    total = sum(hi - lo + 1 for lo, hi in ranges)
    for lo, hi in ranges:
        if total > 4096:
            lo, hi = max(lo, 0x41), min(hi, 0x7A)
        for code in range(lo, hi + 1):
            for other in {chr(code).lower(), chr(code).upper()}:
                if len(other) == 1 and ord(other) != code:
                    out.append((ord(other), ord(other)))
    return out
