"""JSON string content as regex text: character encodings, constants, and "any key but these".

A decoded character can be written several ways inside a JSON string (raw, `\\n`, `\\u000a`, ...).
Two policies, both sound (a matched string always decodes to an allowed value):

* an unconstrained string (`{"type": "string"}`, minLength/maxLength only) accepts every valid JSON
  string: raw characters where JSON allows them, the two-character escapes, and `\\uXXXX` in either
  case, characters beyond the BMP as a surrogate pair; lone surrogates are rejected;
* constrained positions (a pattern's characters and classes, formats, const, enum, property names)
  accept the spellings of `json.dumps` with `ensure_ascii` on or off: ASCII printable characters raw,
  `\\"`, `\\\\` and `\\b\\f\\n\\r\\t`, other control characters and non-ASCII characters raw (where JSON
  allows it) or as `\\u` escapes. `"\\u0061"` therefore does not match the pattern `^a$`.

Non-ASCII characters are written raw into the regex (interegular has no `\\u` escapes).
"""

from __future__ import annotations

import functools

from loomlm.grammars.json_numbers import alternation, hex_range, hex_set

MAX_CODE = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)
Ranges = list[tuple[int, int]]

_SHORT = {0x22: '"', 0x5C: "\\\\", 0x2F: "/", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}
_REGEX_SPECIAL = set(".^$*+?{}[]\\|()")
_CLASS_SPECIAL = set("\\]^-[&~|")


def normalize(ranges: Ranges) -> Ranges:
    """Sorted, merged, surrogate-free code point ranges."""
    out: Ranges = []
    for lo, hi in sorted(ranges):
        pieces = [(lo, hi)]
        if lo <= SURROGATES[1] and hi >= SURROGATES[0]:
            pieces = [(lo, SURROGATES[0] - 1), (SURROGATES[1] + 1, hi)]
        for a, b in pieces:
            if a > b:
                continue
            if out and a <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
    return out


def complement(ranges: Ranges) -> Ranges:
    """All code points (surrogates aside) not in `ranges`."""
    out, start = [], 0
    for lo, hi in normalize(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE:
        out.append((start, MAX_CODE))
    return normalize(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    a, b = normalize(a), normalize(b)
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):  # one merge pass over the two sorted lists
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return normalize(out)


def _class_char(code: int) -> str:
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    ch = chr(code)
    return "\\" + ch if ch in _CLASS_SPECIAL else ch


def char_class(ranges: Ranges) -> str:
    """`[...]` for a set of raw characters, negated when the set reaches the last code point."""
    ranges = normalize(ranges)
    negate = bool(ranges) and ranges[-1][1] == MAX_CODE
    listed = complement(ranges) if negate else ranges
    body = "".join(
        _class_char(lo) if lo == hi else _class_char(lo) + ("" if hi == lo + 1 else "-") + _class_char(hi)
        for lo, hi in listed
    )
    if not negate and len(listed) == 1 and listed[0][0] == listed[0][1]:
        return escape_literal(chr(listed[0][0])) if listed[0][0] >= 0x20 else body
    return f"[^{body}]" if negate else f"[{body}]"


def escape_literal(text: str) -> str:
    """Regex text matching `text` exactly (raw characters, control characters as `\\xHH`)."""
    return "".join(
        "\\" + c if c in _REGEX_SPECIAL else f"\\x{ord(c):02x}" if ord(c) < 0x20 or c == "\x7f" else c for c in text
    )


def _u_escapes(ranges: Ranges) -> str | None:
    """What follows the `\\u` of the escapes of the code points in the ranges: four hex digits, or
    beyond the BMP a high surrogate, `\\u`, a low surrogate. None for no code point."""
    ranges = normalize(ranges)
    bmp = [(lo, min(hi, 0xFFFF)) for lo, hi in ranges if lo <= 0xFFFF]
    parts = [hex_set(bmp)] if bmp else []
    for lo, hi in ranges:
        if hi >= 0x10000:
            parts += _pair_ranges(max(lo, 0x10000), hi)
    return alternation(parts) if parts else None


def _pair_ranges(lo: int, hi: int) -> list[str]:
    """Surrogate pairs (`DXXX\\uDXXX`) of the astral code points in [lo, hi]."""

    def split(code: int) -> tuple[int, int]:
        return 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)

    def pair(h1: int, h2: int, l1: int, l2: int) -> str:
        return f"{hex_range(h1, h2)}\\\\u{hex_range(l1, l2)}"

    (hl, ll), (hh, lh) = split(lo), split(hi)
    if hl == hh:
        return [pair(hl, hl, ll, lh)]
    out = [pair(hl, hl, ll, 0xDFFF)] if ll > 0xDC00 else []
    first = hl if ll == 0xDC00 else hl + 1
    last = hh if lh == 0xDFFF else hh - 1
    if first <= last:
        out.append(pair(first, last, 0xDC00, 0xDFFF))
    if lh < 0xDFFF:
        out.append(pair(hh, hh, 0xDC00, lh))
    return out


# Code points json.dumps writes as \u escapes (with ensure_ascii): controls, DEL and non-ASCII.
_DUMPS_ESCAPED: Ranges = [(0x00, 0x1F), (0x7F, MAX_CODE)]
_RAW: Ranges = [(0x20, 0x21), (0x23, 0x5B), (0x5D, MAX_CODE)]  # what JSON allows unescaped


def char_set(ranges: Ranges, *, every_escape: bool = False, raw: bool = True) -> str | None:
    """One character from the set in its json.dumps spellings (raw, two-character escape, `\\u` escape
    of a control or non-ASCII character), or with `every_escape` in any spelling JSON allows (also
    `\\u0061` for "a"); only the escaped spellings when not `raw`. None for the empty set."""
    ranges = normalize(ranges)
    if not ranges:
        return None
    raw = intersect(ranges, _RAW) if raw else []
    short = sorted(code for code in _SHORT if any(lo <= code <= hi for lo, hi in ranges))
    escapes = [_SHORT[short[0]] if len(short) == 1 else "[" + "".join(_SHORT[c] for c in short) + "]"] if short else []
    u = _u_escapes(ranges if every_escape else intersect(ranges, _DUMPS_ESCAPED))
    escapes += ["u" + u] if u else []
    return alternation(([char_class(raw)] if raw else []) + (["\\\\" + alternation(escapes)] if escapes else []))


ANY_CHAR = char_set([(0, MAX_CODE)], every_escape=True)
ANY_STRING = f'"{ANY_CHAR}*"'
# A string in the spellings of json.dumps (the policy of constrained positions, property names among them).
DUMPS_STRING = f'"{char_set([(0, MAX_CODE)])}*"'


@functools.lru_cache(maxsize=4096)  # a pure function of one character, called for every key's characters
def literal_char(ch: str) -> str:
    """The json.dumps spellings of one character (see the module docstring)."""
    code = ord(ch)
    if code in _SHORT and code != 0x2F:
        return "\\\\" + _SHORT[code]
    if code < 0x20:
        return "\\\\u" + hex_range(code, code)
    if code < 0x7F:
        return escape_literal(ch)
    return alternation([escape_literal(ch), "\\\\u" + _u_escapes([(code, code)])])


def literal_text(text: str) -> str:
    """A JSON string's content spelling exactly `text`."""
    return "".join(literal_char(c) for c in text)


def literal_string(text: str) -> str:
    return f'"{literal_text(text)}"'


def plain_names(names: list[str]) -> bool:
    """Whether each name has one json.dumps spelling, itself (printable ASCII but `"`, `\\` and `/`),
    so that a string spelled as json.dumps would is a name exactly when its bytes are one."""
    return all(0x20 <= ord(ch) < 0x7F and ch not in '"\\/' for name in names for ch in name)


def key_not_in(names: list[str]) -> str:
    """A JSON string (quotes included) whose decoded value is none of `names`: either a proper prefix
    of some name that is not itself a name, or a prefix followed by a character that leaves every
    name, then anything. Names are followed along their literal spellings."""
    return _key_not_in(tuple(names))


@functools.lru_cache(maxsize=1024)  # the same object is often compiled more than once (refs, allOf)
def _key_not_in(names: tuple[str, ...]) -> str:
    trie: dict = {}
    for name in names:
        node = trie
        for ch in name:
            node = node.setdefault(ch, {})
        node[None] = True
    plain = all(0x20 <= ord(ch) < 0x7F and ch not in '"\\' for name in names for ch in name)
    if plain:  # leaving by an escape is possible after any prefix: share that part
        raw = _trie_leaves(trie, raw_only=True)
        leaves = alternation([p for p in (raw, _trie_all(trie) + _ESCAPES) if p is not None])
    else:
        leaves = _trie_leaves(trie, raw_only=False)
    ends = _trie_ends(trie)
    parts = [p for p in (ends, None if leaves is None else f"{leaves}{ANY_CHAR}*") if p is not None]
    return f'"{alternation(parts)}"'


def _trie_ends(node: dict) -> str | None:
    """Prefixes that end inside the trie but are no name."""
    parts = [] if None in node else [""]
    parts += [literal_char(ch) + rest for ch in node if ch is not None and (rest := _trie_ends(node[ch])) is not None]
    return alternation(parts) if parts else None


def _trie_all(node: dict) -> str:
    """Every prefix of every name (the empty one included)."""
    return alternation([""] + [literal_char(ch) + _trie_all(node[ch]) for ch in node if ch is not None])


def _trie_leaves(node: dict, raw_only: bool) -> str | None:
    """Prefixes followed by one character that is not next in any name (raw characters only, or
    in every json.dumps spelling)."""
    kids = [ch for ch in node if ch is not None]
    parts = [literal_char(ch) + rest for ch in kids if (rest := _trie_leaves(node[ch], raw_only)) is not None]
    leave = _leave(frozenset(kids), raw_only)
    return alternation(parts + ([leave] if leave else [])) if parts or leave else None


@functools.lru_cache(maxsize=4096)  # trie nodes repeat their sets of next characters (often one letter)
def _leave(kids: frozenset[str], raw_only: bool) -> str:
    """A character that is none of `kids` (raw characters only, or in every json.dumps spelling)."""
    others = complement([(ord(c), ord(c)) for c in kids])
    return char_class(intersect(others, _RAW)) if raw_only else char_set(others)


# The escaped spellings of the characters that are not plain ASCII (never "\\/", which is "/").
_ESCAPES = char_set(_DUMPS_ESCAPED + [(0x22, 0x22), (0x5C, 0x5C)], raw=False)
