"""JSON-schema `pattern` (an ECMA-262 regex over decoded characters) -> regex over JSON string content.

The pattern is parsed into a small tree and re-emitted with every character replaced by its JSON
spellings (`json_strings`), so `"a\\nb"` in a pattern matches the escaped text `a\\\\nb` inside the
quotes. ECMA semantics are kept: `\\d` and `\\w` are ASCII, `\\s` includes the Unicode spaces, `.`
excludes line terminators. Lookaheads are translated for the grammar engine only (`lookahead=True`;
not inside repetitions). Lookbehinds, backreferences, word boundaries, Unicode property escapes and
anchors anywhere but at the ends of a top-level alternative (or of a lookahead) raise `GrammarError`.

`search=True` gives the spec's meaning (the pattern may match anywhere in the string: an alternative
not anchored with `^`/`$` gets any characters before/after it); `search=False` makes the pattern
describe the whole string, anchored or not.
"""

from __future__ import annotations

from dataclasses import dataclass

from loomlm.grammars.errors import GrammarError, GrammarUnsupportedError
from loomlm.grammars.json_numbers import alternation
from loomlm.grammars.json_strings import ANY_CHAR, MAX_CODE, Ranges, char_set, complement, literal_char

DIGIT: Ranges = [(0x30, 0x39)]
WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
SPACE: Ranges = [
    (0x09, 0x0D),
    (0x20, 0x20),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
    (0xFEFF, 0xFEFF),
]
DOT: Ranges = complement([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)])
_CLASS_ESCAPES = {"d": DIGIT, "w": WORD, "s": SPACE}
MAX_FITTED_REPEAT = 128  # most repetitions a maxLength-capped pattern keeps (see translate)
_CONTROL_ESCAPES = {"t": 9, "n": 10, "v": 11, "f": 12, "r": 13, "0": 0}


@dataclass
class Node:
    """kind: "lit" (value: str), "set" (value: Ranges), "seq"/"alt" (value: list[Node]),
    "rep" (value: Node, lo, hi with hi None = unbounded), "bol"/"eol" (anchors)."""

    kind: str  # also "look" (value: the asserted Node, lo: 1 when negative) and "end" (the string's end)
    value: str | Ranges | list | Node | None = None
    lo: int = 0
    hi: int | None = None


class _Parser:
    def __init__(self, pattern: str, where: str) -> None:
        self.text, self.pos, self.where = pattern, 0, where

    def fail(self, why: str) -> GrammarError:
        kind = GrammarUnsupportedError if "not supported" in why else GrammarError
        return kind(f"pattern at {self.where}: {why} (in {self.text!r})")

    def peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.text[i] if i < len(self.text) else ""

    def parse(self) -> Node:
        node = self.alternatives()
        if self.pos < len(self.text):
            raise self.fail(f"unbalanced ')' at offset {self.pos}")
        return node

    def alternatives(self) -> Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else Node("alt", branches)

    def sequence(self) -> Node:
        items: list[Node] = []
        while self.peek() not in ("", "|", ")"):
            atom = self.atom()
            items.append(self.quantified(atom))
        return Node("seq", items)

    def quantified(self, atom: Node) -> Node:
        bounds = self.quantifier()
        if bounds is None:
            return atom
        if atom.kind in ("bol", "eol"):
            raise self.fail("a quantifier on an anchor is not supported")
        if self.peek() == "?":
            self.pos += 1  # lazy: same language
        if self.quantifier(peek_only=True) is not None:
            raise self.fail("nothing to repeat")
        return Node("rep", atom, *bounds)

    def quantifier(self, peek_only: bool = False) -> tuple[int, int | None] | None:
        c = self.peek()
        simple = {"*": (0, None), "+": (1, None), "?": (0, 1)}
        if c in simple:
            if not peek_only:
                self.pos += 1
            return simple[c]
        if c != "{":
            return None
        end = self.text.find("}", self.pos)
        body = self.text[self.pos + 1 : end] if end > 0 else ""
        lo, comma, hi = body.partition(",")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None  # a literal '{' (Annex B)
        if not peek_only:
            self.pos = end + 1
        bounds = (int(lo), int(hi) if hi else None if comma else int(lo))
        if bounds[1] is not None and bounds[1] < bounds[0]:
            raise self.fail(f"quantifier {{{body}}} out of order")
        return bounds

    def atom(self) -> Node:
        c = self.peek()
        if c in ("*", "+", "?") or (c == "{" and self.quantifier(peek_only=True) is not None):
            raise self.fail(f"nothing to repeat at offset {self.pos}")
        self.pos += 1
        if c == "(":
            return self.group()
        if c == "[":
            return Node("set", self.char_class())
        if c == ".":
            return Node("set", DOT)
        if c == "^":
            return Node("bol")
        if c == "$":
            return Node("eol")
        if c == "\\":
            return self.escape(in_class=False)
        return Node("lit", c)

    def group(self) -> Node:
        if self.peek() == "?":
            head = self.text[self.pos : self.pos + 3]
            if head.startswith("?:"):
                self.pos += 2
            elif head.startswith("?<") and head[2:3] not in ("=", "!"):
                close = self.text.find(">", self.pos)
                if close < 0:
                    raise self.fail("unterminated group name")
                self.pos = close + 1
            elif head[:2] in ("?=", "?!"):
                self.pos += 2
                inner = self.alternatives()
                if self.peek() != ")":
                    raise self.fail("missing ')'")
                self.pos += 1
                return Node("look", inner, lo=int(head[1] == "!"))
            else:
                raise self.fail("lookbehind assertions are not supported")
        inner = self.alternatives()
        if self.peek() != ")":
            raise self.fail("missing ')'")
        self.pos += 1
        return inner

    def char_class(self) -> Ranges:
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        ranges: Ranges = []
        while self.peek() != "]":
            if self.peek() == "":
                raise self.fail("missing ']'")
            first = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("]", "") and first.kind == "lit":
                self.pos += 1
                last = self.class_atom()
                if last.kind == "lit":
                    lo, hi = ord(first.value), ord(last.value)
                    if lo > hi:
                        raise self.fail("character class range out of order")
                    ranges.append((lo, hi))
                    continue
                ranges += [(ord(first.value),) * 2, (0x2D, 0x2D), *last.value]  # e.g. [a-\d]
                continue
            ranges += [(ord(first.value),) * 2] if first.kind == "lit" else first.value
        self.pos += 1
        return complement(ranges) if negate else ranges

    def class_atom(self) -> Node:
        c = self.peek()
        self.pos += 1
        if c != "\\":
            return Node("lit", c)
        if self.peek() == "b":
            self.pos += 1
            return Node("lit", "\b")
        if self.peek() == "-":
            self.pos += 1
            return Node("lit", "-")
        return self.escape(in_class=True)

    def escape(self, in_class: bool) -> Node:
        c = self.peek()
        self.pos += 1
        if c == "":
            raise self.fail("pattern ends with a backslash")
        if c.lower() in _CLASS_ESCAPES:
            ranges = _CLASS_ESCAPES[c.lower()]
            return Node("set", ranges if c.islower() else complement(ranges))
        if c in _CONTROL_ESCAPES and not (c == "0" and self.peek().isdigit()):
            return Node("lit", chr(_CONTROL_ESCAPES[c]))
        if c in "bB":
            raise self.fail("word boundaries (\\b, \\B) are not supported")
        if c.isdigit() or c == "k":
            raise self.fail("backreferences are not supported")
        if c in "pP":
            raise self.fail("Unicode property escapes (\\p, \\P) are not supported")
        if c == "c" and self.peek().isalpha():
            self.pos += 1
            return Node("lit", chr(ord(self.text[self.pos - 1]) % 32))
        if c in "xu":
            return Node("lit", self.hex_escape(c))
        return Node("lit", c)

    def hex_escape(self, kind: str) -> str:
        if kind == "u" and self.peek() == "{":
            end = self.text.find("}", self.pos)
            digits = self.text[self.pos + 1 : end] if end > 0 else ""
            self.pos = end + 1
        else:
            width = 2 if kind == "x" else 4
            digits = self.text[self.pos : self.pos + width]
            if len(digits) != width:
                digits = ""
            self.pos += width
        try:
            code = int(digits, 16)
        except ValueError:
            raise self.fail(f"malformed \\{kind} escape") from None
        if code > MAX_CODE:
            raise self.fail(f"\\{kind} escape beyond U+10FFFF")
        if 0xD800 <= code <= 0xDBFF and self.text[self.pos : self.pos + 2] == "\\u":
            low = self.text[self.pos + 2 : self.pos + 6]
            if len(low) == 4 and all(h in "0123456789abcdefABCDEF" for h in low) and 0xDC00 <= int(low, 16) <= 0xDFFF:
                self.pos += 6
                return chr(0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00))
        if 0xD800 <= code <= 0xDFFF:
            raise self.fail("lone surrogate escapes are not supported")
        return chr(code)


@dataclass(frozen=True)
class Pattern:
    """A translated pattern: `regex` (JSON string content, no quotes) and the decoded length range."""

    regex: str | None  # None: matches no string
    min_len: int
    max_len: int | None


def translate(
    pattern: str, *, search: bool, where: str = "#", max_len: int | None = None, lookahead: bool = False
) -> Pattern:
    """Translate an ECMA-262 pattern; see the module docstring for `search`. With `max_len` (and not
    `search`), repetitions are capped evenly (and at MAX_FITTED_REPEAT) so that no match is longer: a
    sound narrowing, the way maxLength combines with a pattern of unbounded length. `lookahead`: the
    regex goes to the grammar engine's lexer, which reads lookaheads; they are emitted with Python's
    meaning (the rest of the input), which includes the closing quote, so a `$` inside one becomes
    `"`. The string must then be the regex's last thing before that quote, as in a JSON string."""
    tree = _Parser(pattern, where).parse()
    if _has_look(tree):
        if not lookahead:
            raise GrammarUnsupportedError(f"pattern at {where}: lookaheads need the grammar engine (in {pattern!r})")
        tree = _anchored_looks(tree, where, pattern)
    branches = tree.value if tree.kind == "alt" else [tree]
    regexes, lows, highs = [], [], []
    for branch in branches:
        items = list(branch.value)
        start = bool(items) and items[0].kind == "bol"
        while items and items[0].kind == "bol":
            items.pop(0)
        end = bool(items) and items[-1].kind == "eol"
        while items and items[-1].kind == "eol":
            items.pop()
        body = Node("seq", items)
        _check_no_anchor(body, where, pattern)
        if max_len is not None and not search:
            body = _fit(body, max_len)
            if body is None:
                continue
        regex = _emit(body)
        lo, hi = _length(body)
        if regex is None:
            continue
        if search and not start:
            regex, hi = f"{ANY_CHAR}*" + regex, None
        if search and not end:
            regex, hi = regex + f"{ANY_CHAR}*", None
        regexes.append(regex)
        lows.append(lo)
        highs.append(hi)
    if not regexes:
        return Pattern(None, 0, 0)
    top = None if any(h is None for h in highs) else max(highs)
    return Pattern(alternation(regexes) if len(regexes) > 1 else regexes[0], min(lows), top)


def repeat_chars(pattern: str, *, search: bool, where: str = "#") -> tuple[Ranges, int, int | None] | None:
    """(character set, min, max) when the pattern is one repeated character set or literal, `^X{m,n}$`
    (anchors optional unless `search`), so that minLength/maxLength fold into the repetition."""
    tree = _Parser(pattern, where).parse()
    items = list(tree.value) if tree.kind == "seq" else []
    start = bool(items) and items[0].kind == "bol"
    end = bool(items) and items[-1].kind == "eol"
    core = items[int(start) : len(items) - int(end)]
    if (search and not (start and end)) or len(core) != 1:
        return None
    node = core[0]
    while node.kind == "seq" and len(node.value) == 1:  # a group around it
        node = node.value[0]
    if node.kind in ("set", "lit"):
        node = Node("rep", node, 1, 1)
    if node.kind != "rep" or node.value.kind not in ("set", "lit"):
        return None
    atom = node.value
    ranges = atom.value if atom.kind == "set" else [(ord(atom.value), ord(atom.value))]
    return ranges, node.lo, node.hi


def _fit(node: Node, limit: int) -> Node | None:
    """`node` with every repetition capped at the largest common count n (at most MAX_FITTED_REPEAT,
    to keep automata small) that keeps the longest match within `limit` characters; None when even
    n = 0 is too long."""
    if (_length(node)[1] or limit + 1) <= limit:
        return node
    if _length(_cap(node, 0))[1] > limit:
        return None
    low, high = 0, min(limit, MAX_FITTED_REPEAT)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if _length(_cap(node, mid))[1] <= limit else (low, mid - 1)
    return _cap(node, low)


def _cap(node: Node, count: int) -> Node:
    if node.kind == "look":
        return node
    if node.kind in ("seq", "alt"):
        return Node(node.kind, [_cap(child, count) for child in node.value])
    if node.kind != "rep":
        return node
    top = max(node.lo, count)
    return Node("rep", _cap(node.value, count), node.lo, top if node.hi is None else min(node.hi, top))


def _has_look(node: Node) -> bool:
    if node.kind == "look":
        return True
    if node.kind in ("seq", "alt"):
        return any(_has_look(child) for child in node.value)
    return node.kind == "rep" and _has_look(node.value)


def _anchored_looks(tree: Node, where: str, pattern: str) -> Node:
    """The tree with the anchors inside its lookaheads resolved: `$` at the end of a lookahead's
    alternative is the string's end ("end", emitted as the closing quote); `^` at the start of one is
    dropped where the lookahead itself is the first thing of a `^`-anchored top-level alternative.
    A lookahead inside a repetition or another lookahead is not supported."""

    def refuse(why: str) -> GrammarUnsupportedError:
        return GrammarUnsupportedError(f"pattern at {where}: {why} (in {pattern!r})")

    def inside(node: Node, at_start: bool) -> Node:  # the asserted pattern
        branches = node.value if node.kind == "alt" else [node]
        out = []
        for branch in branches:
            items = list(branch.value) if branch.kind == "seq" else [branch]
            while items and items[0].kind == "bol":
                if not at_start:
                    raise refuse("'^' inside a lookahead is only supported at the pattern's start")
                items.pop(0)
            if items and items[-1].kind == "eol":
                items[-1] = Node("end")
            for item in items:
                if _has_look(item):
                    raise refuse("a lookahead inside a lookahead is not supported")
                if item.kind != "end":
                    _check_no_anchor(item, where, pattern)
            out.append(Node("seq", items))
        return out[0] if len(out) == 1 else Node("alt", out)

    def walk(node: Node, at_start: bool) -> Node:
        if node.kind == "look":
            return Node("look", inside(node.value, at_start), lo=node.lo)
        if node.kind == "rep":
            if _has_look(node.value):
                raise refuse("a lookahead inside a repetition is not supported")
            return node
        if node.kind == "alt":
            return Node("alt", [walk(child, at_start) for child in node.value])
        if node.kind == "seq":
            items, out = list(node.value), []
            anchored = at_start
            for i, item in enumerate(items):
                out.append(walk(item, anchored and all(x.kind in ("bol", "look") for x in items[:i])))
                anchored = anchored or item.kind == "bol"
            return Node("seq", out)
        return node

    branches = tree.value if tree.kind == "alt" else [tree]
    fixed = [
        walk(b, True) if b.kind == "seq" and b.value and b.value[0].kind == "bol" else walk(b, False) for b in branches
    ]
    return fixed[0] if len(fixed) == 1 else Node("alt", fixed)


def _check_no_anchor(node: Node, where: str, pattern: str) -> None:
    if node.kind in ("bol", "eol"):
        raise GrammarUnsupportedError(
            f"pattern at {where}: anchors (^, $) are only supported at the ends of the "
            f"pattern or of a top-level alternative (in {pattern!r})"
        )
    if node.kind in ("seq", "alt"):
        for child in node.value:
            _check_no_anchor(child, where, pattern)
    elif node.kind == "rep":
        _check_no_anchor(node.value, where, pattern)
    # a lookahead's anchors were resolved by _anchored_looks


def _emit(node: Node) -> str | None:
    """Regex text over JSON spellings; None for the empty language."""
    if node.kind == "lit":
        return literal_char(node.value)
    if node.kind == "end":
        return '"'  # the closing quote right after the content (inside a lookahead only)
    if node.kind == "look":
        inner = _emit(node.value)
        if inner is None:  # nothing to see: a negative lookahead always holds, a positive one never
            return "" if node.lo else None
        return f"(?{'!' if node.lo else '='}{inner})"
    if node.kind == "set":
        return char_set(node.value)
    if node.kind == "seq":
        parts = [_emit(child) for child in node.value]
        return None if any(p is None for p in parts) else "".join(parts)
    if node.kind == "alt":
        parts = [p for p in (_emit(child) for child in node.value) if p is not None]
        return None if not parts else alternation(parts) if len(parts) > 1 else parts[0]
    inner = _emit(node.value)
    if inner is None:
        return "" if node.lo == 0 else None
    if inner == "":
        return ""
    count = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((node.lo, node.hi))
    if count is None:
        count = f"{{{node.lo}}}" if node.lo == node.hi else f"{{{node.lo},{'' if node.hi is None else node.hi}}}"
    return f"(?:{inner}){count}"


def _length(node: Node) -> tuple[int, int | None]:
    """Shortest and longest decoded length (None = unbounded)."""
    if node.kind in ("lit", "set"):
        return 1, 1
    if node.kind in ("look", "end"):
        return 0, 0
    if node.kind in ("seq", "alt"):
        spans = [_length(child) for child in node.value]
        if not spans:
            return 0, 0
        if node.kind == "alt":
            return min(s[0] for s in spans), None if any(s[1] is None for s in spans) else max(s[1] for s in spans)
        return sum(s[0] for s in spans), None if any(s[1] is None for s in spans) else sum(s[1] for s in spans)
    lo, hi = _length(node.value)
    if hi == 0:
        return 0, 0
    return lo * node.lo, None if hi is None or node.hi is None else hi * node.hi
