"""Unicode code point ranges as UTF-8 byte-range sequences.

A character class over code points becomes, at the byte level, a union of "rectangles": sequences of
byte ranges such as [E1-EC][80-BF][80-BF], where every byte of the range at each position may combine
with every byte of the other positions. Splitting a code point range at the UTF-8 length boundaries and
then at the 6-bit continuation boundaries gives such rectangles exactly (the idea behind RE2's and the
`regex-syntax` crate's UTF-8 compilers). Surrogates (U+D800-U+DFFF) have no UTF-8 encoding and are
dropped.
"""

from __future__ import annotations

MAX_CODE_POINT = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_LENGTH_LIMITS = (0x7F, 0x7FF, 0xFFFF, MAX_CODE_POINT)

ByteRanges = tuple[tuple[int, int], ...]  # one (lo, hi) inclusive byte range per position


def code_point_ranges(code_points: list[int]) -> list[tuple[int, int]]:
    """Sorted code points -> inclusive ranges of consecutive ones."""
    ranges: list[tuple[int, int]] = []
    for c in code_points:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    return ranges


def complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Code point ranges not covered by sorted, disjoint `ranges` (within 0..U+10FFFF)."""
    out: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return out


def utf8_sequences(ranges: list[tuple[int, int]]) -> list[ByteRanges]:
    """Byte-range sequences whose union is exactly the UTF-8 encodings of the code points in `ranges`."""
    out: list[ByteRanges] = []
    for lo, hi in ranges:
        for a, b in _drop_surrogates(lo, hi):
            _split(a, b, out)
    return out


def _drop_surrogates(lo: int, hi: int) -> list[tuple[int, int]]:
    s_lo, s_hi = _SURROGATES
    if hi < s_lo or lo > s_hi:
        return [(lo, hi)]
    parts = []
    if lo < s_lo:
        parts.append((lo, s_lo - 1))
    if hi > s_hi:
        parts.append((s_hi + 1, hi))
    return parts


def _split(lo: int, hi: int, out: list[ByteRanges]) -> None:
    # First: one encoding length per range.
    for limit in _LENGTH_LIMITS:
        if lo <= limit < hi:
            _split(lo, limit, out)
            _split(limit + 1, hi, out)
            return
    if hi <= 0x7F:
        out.append(((lo, hi),))
        return
    # Then: every continuation position either spans its full 6-bit range or holds one fixed prefix.
    n = len(chr(hi).encode("utf-8"))
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                _split(lo, lo | m, out)
                _split((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split(lo, (hi & ~m) - 1, out)
                _split(hi & ~m, hi, out)
                return
    a, b = chr(lo).encode("utf-8"), chr(hi).encode("utf-8")
    out.append(tuple(zip(a, b)))
