"""Regex assembly for JSON structure: whitespace styles, objects, arrays, constants, any value.

Everything takes ready regexes for the parts (member values, items) and a `Style` saying where
whitespace may go, so the JSON-schema compiler only decides *what* goes where.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.grammar_ir import Alt, Part, Ref, Seq, Term, alt, rep, seq
from loomlm.grammars.json_numbers import ANY_NUMBER, exact_number
from loomlm.grammars.json_strings import ANY_STRING, literal_string

FLEXIBLE_WHITESPACE = "[ \\t\\n\\r]{0,8}"


@dataclass(frozen=True)
class Style:
    """Separators as regex text; `inner` is the whitespace allowed just inside brackets."""

    comma: str
    colon: str
    inner: str = ""

    def wrap(self, open_: str, body: Part, close: str) -> Part:
        if body == "":
            return f"\\{open_}{self.inner}\\{close}"
        return seq(f"\\{open_}{self.inner}", body, f"{self.inner}\\{close}")


COMPACT = Style(",", ":")


def whitespace_style(whitespace: str) -> Style:
    """ "default": json.dumps output with either separators (", "/": " or ","/":"), no newlines;
    "compact": no whitespace; "flexible": FLEXIBLE_WHITESPACE around every structural character;
    anything else: a regex for that whitespace (its language is the caller's responsibility)."""
    if not isinstance(whitespace, str):
        raise GrammarError(f"whitespace must be a string, got {whitespace!r}")
    if whitespace in ("default", "compact"):
        return Style(", ?", ": ?") if whitespace == "default" else COMPACT
    ws = FLEXIBLE_WHITESPACE
    if whitespace != "flexible":
        try:
            re.compile(whitespace)
        except re.error as exc:
            raise GrammarError(f"whitespace {whitespace!r} is neither a mode nor a valid regex: {exc}") from None
        ws = f"(?:{whitespace})"
    return Style(f"{ws},{ws}", f"{ws}:{ws}", ws)


def repeat(regex: Part, lo: int, hi: int | None) -> Part:
    """`regex` lo..hi times (hi None: unbounded)."""
    return rep(regex, lo, hi)


def object_regex(
    members: list[tuple[Part, bool]], extra: Part | None, style: Style, extras: tuple[int, int | None] = (0, None)
) -> Part:
    """An object of `members` in order (each (regex of `"key":value`, required)) followed by
    extras[0]..extras[1] `extra` members. Extra counts other than (0, None) need every member
    required (the caller checks). Each member and `extra` appear at most twice in the result."""
    lo, hi = extras
    if extra is None or hi == 0:
        extra, lo, hi = None, 0, 0
    declared = _subsequence(members, style.comma)
    empty_ok = not any(needed for _, needed in members)
    if extra is None:
        body = declared or ""
    elif declared is None:
        body = seq(extra, repeat(seq(style.comma, extra), max(lo - 1, 0), None if hi is None else hi - 1))
    elif lo or hi is not None:
        body = seq(declared, repeat(seq(style.comma, extra), lo, hi))
    else:
        body = seq(alt([declared, extra] if empty_ok else [declared]), repeat(seq(style.comma, extra), 0, None))
    parts = [style.wrap("{", body, "}")] if body != "" else []
    return alt(parts + ([style.wrap("{", "", "}")] if empty_ok and lo == 0 else []))


def _subsequence(members: list[tuple[Part, bool]], comma: str) -> Part | None:
    """The non-empty in-order subsequences of `members` that keep every required one, comma-separated;
    built from the end: R(k) = (M(k) ",")? R(k+1) | M(k) for an optional member, so that each member
    appears at most twice (the obvious "which member comes first" alternation is quadratic)."""
    regex: Part | None = None
    required_later = False
    for member, needed in reversed(members):
        if regex is None:
            regex = member
        elif needed:
            regex = seq(member, seq(comma, regex) if required_later else repeat(seq(comma, regex), 0, 1))
        else:
            regex = alt([seq(repeat(seq(member, comma), 0, 1), regex)] + ([] if required_later else [member]))
        required_later = required_later or needed
    return regex


def array_regex(prefix: list[Part], item: Part | None, lo: int, hi: int | None, style: Style) -> Part:
    """An array whose first items match `prefix`, the rest `item` (None: no more), lo..hi items.
    The caller ensures lo <= hi and that the bounds fit the prefix/item shape."""
    k = len(prefix)
    rest_lo, rest_hi = max(0, lo - k), None if hi is None else hi - k
    body: Part = ""
    if item is not None and rest_hi != 0:
        if k:
            body = repeat(seq(style.comma, item), rest_lo, rest_hi)
        else:
            rest = repeat(seq(style.comma, item), max(rest_lo - 1, 0), None if rest_hi is None else rest_hi - 1)
            body = seq(item, rest)
    for i in reversed(range(k)):
        piece = seq(style.comma if i else "", prefix[i], body)
        body = piece if i < lo or i == 0 else repeat(piece, 0, 1)
    parts = [style.wrap("[", body, "]")] if body != "" else []
    return alt(parts + ([style.wrap("[", "", "]")] if lo == 0 else []))


def unique_array(values: list[Part], lo: int, hi: int | None, style: Style, rules: dict, prefix: str) -> Part:
    """An array of distinct members of a small finite set (`values`: one part per value), lo..hi
    items: rule `prefix_<used set>` continues an array whose items so far are that set, so the
    grammar has a rule per reachable subset (2**n at most) instead of a regex per permutation."""
    n = len(values)
    hi = n if hi is None else min(hi, n)

    def rest(used: int) -> Part:
        name = f"{prefix}_{used:x}"
        if name not in rules:
            rules[name] = None  # reserved while the body is built
            count = bin(used).count("1")
            nexts = [
                seq(style.comma, values[k], rest(used | 1 << k)) for k in range(n) if count < hi and not used >> k & 1
            ]
            rules[name] = alt(([""] if count >= lo else []) + nexts) if nexts else Seq(())  # Seq(()): empty
        return Ref(name)

    firsts = [seq(values[k], rest(1 << k)) for k in range(n)] if hi > 0 else []
    parts = [style.wrap("[", alt(firsts), "]")] if firsts else []
    return alt(parts + ([style.wrap("[", "", "]")] if lo == 0 else []))


@lru_cache(maxsize=64)
def any_value(style: Style, depth: int) -> str:
    """Any JSON value with at most `depth` levels of nested arrays/objects."""
    parts = [ANY_STRING, ANY_NUMBER, "true", "false", "null"]
    return alt(parts + ([any_array(style, depth), any_object(style, depth)] if depth > 0 else []))


@lru_cache(maxsize=64)
def any_array(style: Style, depth: int) -> str:
    """Any array nesting at most `depth` levels (itself included; depth >= 1)."""
    return array_regex([], any_value(style, depth - 1), 0, None, style)


@lru_cache(maxsize=64)
def any_object(style: Style, depth: int) -> str:
    """Any object nesting at most `depth` levels (itself included; depth >= 1)."""
    return object_regex([], ANY_STRING + style.colon + any_value(style, depth - 1), style)


ANY_VALUE_RULE = "$json_value"


def any_value_rules(style: Style) -> dict[str, Part]:
    """Rules for any JSON value, nested without bound (the grammar form of `any_value`)."""
    value, array, obj = Ref(ANY_VALUE_RULE), Ref("$json_array"), Ref("$json_object")
    scalars = [Term(ANY_STRING, name="string"), Term(ANY_NUMBER, name="number", nonempty=True)]
    scalars.append(Term("true|false|null", nonempty=True))
    return {
        ANY_VALUE_RULE: Alt((*scalars, array, obj)),
        "$json_array": array_regex([], value, 0, None, style),
        "$json_object": object_regex([], seq(Term(ANY_STRING, name="string"), style.colon, value), style),
    }


def value_regex(value: Any, style: Style) -> str:
    """One JSON value (numbers in every plain-decimal spelling: 1, 1.0, ...); TypeError/ValueError
    for what is not JSON."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
        return exact_number(Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
    if isinstance(value, str):
        return literal_string(value)
    if isinstance(value, list):
        return style.wrap("[", style.comma.join(value_regex(v, style) for v in value), "]")
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        members = (literal_string(k) + style.colon + value_regex(v, style) for k, v in value.items())
        return style.wrap("{", style.comma.join(members), "}")
    raise TypeError(f"{value!r} is not a JSON value")
