"""Regexes for the scalar types of a normalized JSON-schema leaf: strings and numbers.

`string_regex` handles minLength/maxLength (counting characters, an escape or a surrogate pair being
one), `pattern` (translated by `json_pattern`) and `format` (`json_formats`, compiled like a full-match
pattern). Lengths combine with a pattern or format exactly when its own length range fits them or
when it is one repeated character class (`^[a-z]+$`); otherwise, with strict=True, maxLength caps its
repetitions (a sound narrowing) and a minLength it does not meet raises GrammarError; strict=False
ignores the lengths. `number_regex` handles the bounds (`json_numbers`) and
`multipleOf` 1, 10**-k (at most k decimals) or an integer dividing 1000 (with no bound but 0).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from loomlm.grammars.errors import GrammarUnsupportedError
from loomlm.grammars.json_formats import FORMATS
from loomlm.grammars.json_numbers import ANY_INTEGER, ANY_NUMBER, alternation, integer_range, number_range
from loomlm.grammars.json_pattern import repeat_chars, translate
from loomlm.grammars.json_schema_keywords import Path, fail, pointer, unsupported
from loomlm.grammars.json_shapes import repeat
from loomlm.grammars.json_strings import ANY_CHAR, char_set, key_not_in

_INT_FRACTION = "(?:\\.0+)?"


class Context(Protocol):
    """What the builders need from the compiler: the mode, and where to record why a part is empty."""

    strict: bool
    lexed: bool  # the regexes go to the grammar engine's lexer (which reads lookaheads), not a byte DFA

    def unsat(self, reason: str) -> None: ...


def string_regex(leaf: dict, path: Path, ctx: Context, _type: str = "string") -> str | None:
    lo, hi = leaf.get("minLength", 0), leaf.get("maxLength")
    if hi is not None and lo > hi:
        return ctx.unsat(f"minLength {lo} > maxLength {hi} at {pointer(path)}")
    sources = [("pattern", text, where) for text, where in leaf.get("pattern", [])]
    sources += [("format", FORMATS[name], where) for name, where in leaf.get("format", [])]
    if len(sources) > 1:
        if ctx.strict:
            raise fail(
                sources[0][0], path, "several patterns/formats on one string cannot be combined by the regex compiler"
            )
        sources = sources[:1]
    if leaf.get("not_enum"):  # strings other than these (from a negated enum)
        if not sources and not lo and hi is None:
            return key_not_in(leaf["not_enum"])
        if ctx.strict:
            raise unsupported("not", path, "excluding enum strings from a constrained string is not supported")
    content = _constrained(sources[0], lo, hi, ctx) if sources else repeat(ANY_CHAR, lo, hi)
    return None if content is None else f'"{content}"'


def _constrained(source: tuple[str, str, Path], lo: int, hi: int | None, ctx: Context) -> str | None:
    """String content matching a pattern or format, within minLength/maxLength where expressible."""
    keyword, text, where = source
    try:
        return _translated(keyword, text, where, lo, hi, ctx)
    except GrammarUnsupportedError:
        if ctx.strict:
            raise
        return repeat(ANY_CHAR, lo, hi)  # strict=False: the pattern is ignored (a wider language)


def _translated(keyword: str, text: str, where: Path, lo: int, hi: int | None, ctx: Context) -> str | None:
    search = keyword == "pattern" and not ctx.strict
    folded = repeat_chars(text, search=search, where=pointer(where))
    if folded is not None:
        ranges, a, b = folded
        a, b = max(a, lo), (hi if b is None else b if hi is None else min(b, hi))
        chars = char_set(ranges)
        if (b is not None and a > b) or (chars is None and a > 0):
            return ctx.unsat(f"{keyword} at {pointer(where)} cannot meet minLength/maxLength")
        return "" if chars is None else repeat(chars, a, b)
    found = translate(
        text, search=search, where=pointer(where), max_len=hi if ctx.strict else None, lookahead=ctx.lexed
    )
    if found.regex is None:
        return ctx.unsat(f"{keyword} at {pointer(where)} matches no string (within maxLength)")
    if found.min_len >= lo and (hi is None or (found.max_len is not None and found.max_len <= hi)):
        return found.regex
    if (hi is not None and found.min_len > hi) or (found.max_len is not None and found.max_len < lo):
        return ctx.unsat(f"{keyword} at {pointer(where)} cannot meet minLength/maxLength")
    if ctx.strict:
        raise unsupported(keyword, where, "cannot be combined with this minLength")
    return found.regex  # strict=False: the lengths are ignored


def number_regex(leaf: dict, path: Path, ctx: Context, kind: str = "number") -> str | None:
    lower, upper = leaf.get("lower"), leaf.get("upper")
    lo, lo_x = lower or (None, False)
    hi, hi_x = upper or (None, False)
    if lower and upper and (lo > hi or (lo == hi and (lo_x or hi_x))):
        return ctx.unsat(f"no {kind} lies within the bounds at {pointer(path)}")
    integer, places = kind == "integer", None
    steps = leaf.get("multipleOf", [])
    if len(steps) == 1 and steps[0] == 1:
        integer, steps = True, []
    elif len(steps) == 1 and steps[0].normalize().as_tuple()[1] == (1,) and steps[0] < 1:
        places, steps = None if integer else -steps[0].normalize().as_tuple()[2], []  # 0.01: 2 places
    suffix = "" if integer and ctx.strict and kind == "integer" else _INT_FRACTION
    if steps:
        regex = _multiple_of(steps, lower, upper, suffix, path, ctx)
        if regex is not None:
            return regex
    fractional = "integer" in leaf.get("not_types", ()) and not integer  # numbers that are no integers
    if integer:
        body = integer_range(lo, lo_x, hi, hi_x) if lower or upper else ANY_INTEGER
    elif lower or upper or places is not None or fractional:
        body = number_range(lo, lo_x, hi, hi_x, places, fractional)
    else:
        body = ANY_NUMBER
    if body is None:
        return ctx.unsat(f"no {kind} lies within the bounds at {pointer(path)}")
    return body + suffix if integer else body


def _multiple_of(
    steps: list[Decimal], lower: tuple | None, upper: tuple | None, suffix: str, path: Path, ctx: Context
) -> str | None:
    """Integers that are multiples of a divisor of 1000 (the last digits decide), with no bound but 0;
    None (strict=False) to ignore other multipleOf."""
    step = steps[0]
    width = next((k for k in (1, 2, 3) if step == int(step) and 10**k % int(step) == 0), None)
    if len(steps) > 1 or width is None or any(b is not None and b[0] != 0 for b in (lower, upper)):
        if ctx.strict:
            raise unsupported(
                "multipleOf", path, "only multipleOf 10**-k, or a divisor of 1000 with no bound but 0, is supported"
            )
        return None
    multiples = range(int(step), 10**width, int(step))
    positive = alternation(
        [str(v) for v in multiples]
        + ["[1-9][0-9]*" + alternation([str(v).zfill(width) for v in range(0, 10**width, int(step))])]
    )
    parts = [] if (lower and lower[1]) or (upper and upper[1]) else ["-?0"]  # zero unless excluded
    parts += ([] if lower else ["-" + positive]) + ([] if upper else [positive])
    return alternation(parts) + suffix
