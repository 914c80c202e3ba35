"""Regexes for digit ranges and bounded JSON numbers.

Everything here produces plain regex text in the dialect shared by Python `re` and interegular
(`[0-9]` rather than `\\d`, which is Unicode-aware in Python). Three building blocks:

* `fixed_width_range(lo, hi, base)`: digit strings of one length between two bounds (decimal, or
  hexadecimal with letters in either case, used for `\\uXXXX` escapes);
* `int_range(lo, hi)`: canonical JSON integers (`-?(0|[1-9][0-9]*)`) in an interval, either end open;
* `number_range(...)`: JSON numbers in an interval given by `Decimal` bounds. Bounded numbers are
  matched in plain decimal notation only (`12.50`, never `1.25e1`): comparing a bound with
  `mantissa * 10**exponent` is not a regular language. The exception is a bound of 0 (or none),
  where the sign alone decides and the exponent stays allowed.
"""

from __future__ import annotations

from decimal import Decimal

DIGITS = "[0-9]"
EXPONENT = "(?:[eE][+-]?[0-9]+)?"
ANY_NUMBER = "-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?" + EXPONENT
ANY_INTEGER = "-?(?:0|[1-9][0-9]*)"

Bound = tuple[str, bool] | None  # (digits of a fraction, bound is inclusive); None = no bound


def alternation(parts: list[str]) -> str:
    """`(?:a|b)` for several parts, the part itself for one; an "" part makes the group optional."""
    solid = list(dict.fromkeys(p for p in parts if p != ""))
    optional = "" in parts
    if not solid:
        return ""
    if len(solid) == 1 and not optional:
        return solid[0]
    return "(?:" + "|".join(solid) + ")" + ("?" if optional else "")


def digit_class(lo: int, hi: int, base: int = 10) -> str:
    """One digit in [lo, hi]; hexadecimal letters match in both cases."""
    if base == 10 and lo == hi:
        return str(lo)
    if base == 10:
        return f"[{lo}{hi}]" if hi == lo + 1 else f"[{lo}-{hi}]"
    parts = []
    if lo <= 9:
        top = min(hi, 9)
        parts.append(str(lo) if lo == top else f"{lo}-{top}")
    if hi >= 10:
        a, b = max(lo, 10), hi
        for letters in ("abcdef", "ABCDEF"):
            parts.append(letters[a - 10] if a == b else f"{letters[a - 10]}-{letters[b - 10]}")
    text = "".join(parts)
    return text if len(text) == 1 else f"[{text}]"


def _any_digits(count: int, base: int) -> str:
    one = DIGITS if base == 10 else "[0-9a-fA-F]"
    return "" if count == 0 else one if count == 1 else f"{one}{{{count}}}"


def fixed_width_range(lo: list[int], hi: list[int], base: int = 10) -> str:
    """Digit strings of len(lo) == len(hi) digits whose value lies in [lo, hi] (lo <= hi)."""
    if not lo:
        return ""
    if lo == hi:
        return "".join(digit_class(d, d, base) for d in lo)
    a, b, rest = lo[0], hi[0], len(lo) - 1
    if a == b:
        return digit_class(a, a, base) + fixed_width_range(lo[1:], hi[1:], base)
    lo_full = all(d == 0 for d in lo[1:])
    hi_full = all(d == base - 1 for d in hi[1:])
    parts = []
    if not lo_full:
        parts.append(digit_class(a, a, base) + fixed_width_range(lo[1:], [base - 1] * rest, base))
    first, last = (a if lo_full else a + 1), (b if hi_full else b - 1)
    if first <= last:
        parts.append(digit_class(first, last, base) + _any_digits(rest, base))
    if not hi_full:
        parts.append(digit_class(b, b, base) + fixed_width_range([0] * rest, hi[1:], base))
    return alternation(parts)


def hex_range(lo: int, hi: int) -> str:
    """Four hexadecimal digits (either case) spelling a value in [lo, hi]."""
    return hex_set([(lo, hi)])


def hex_set(ranges: list[tuple[int, int]], width: int = 4) -> str:
    """`width` hexadecimal digits (either case) spelling a value in one of the sorted, disjoint
    ranges; leading digits whose continuations agree share one character class."""
    if width == 0:
        return ""
    unit = 16 ** (width - 1)
    groups: dict[tuple, list[int]] = {}
    for d in range(16):
        start, end = d * unit, (d + 1) * unit - 1
        rest = tuple((max(a, start) - start, min(b, end) - start) for a, b in ranges if a <= end and b >= start)
        if rest:
            groups.setdefault(rest, []).append(d)
    parts = []
    for rest, digits in groups.items():
        tail = _any_digits(width - 1, 16) if rest == ((0, unit - 1),) else hex_set(list(rest), width - 1)
        parts.append(_digit_set(digits) + tail)
    return alternation(parts)


def _digit_set(digits: list[int]) -> str:
    """One hexadecimal digit (either case) from `digits`."""
    runs: list[list[int]] = []
    for d in digits:
        if runs and runs[-1][1] == d - 1 and not (d == 10 and runs[-1][1] == 9):
            runs[-1][1] = d
        else:
            runs.append([d, d])
    text = "".join(digit_class(a, b, 16).strip("[]") for a, b in runs)
    return text if len(text) == 1 else f"[{text}]"


def uint_range(lo: int, hi: int | None) -> str | None:
    """Canonical non-negative integers (no leading zeros) in [lo, hi]; hi None = unbounded."""
    if hi is not None and lo > hi:
        return None
    if hi is None and lo <= 1:
        return "(?:0|[1-9][0-9]*)" if lo == 0 else "[1-9][0-9]*"
    parts = []
    top = len(str(hi)) if hi is not None else len(str(lo))
    for width in range(len(str(lo)), top + 1):
        a = max(lo, 10 ** (width - 1) if width > 1 else 0)
        b = 10**width - 1 if hi is None else min(hi, 10**width - 1)
        if a <= b:
            parts.append(fixed_width_range([int(c) for c in str(a)], [int(c) for c in str(b)]))
    if hi is None:
        parts.append(f"[1-9][0-9]{{{top},}}")
    return alternation(parts)


def int_range(lo: int | None, hi: int | None) -> str | None:
    """Canonical JSON integers in [lo, hi] (None = unbounded), "-0" included when 0 is."""
    if lo is not None and hi is not None and lo > hi:
        return None
    parts = []
    if lo is None or lo < 0:
        neg = uint_range(max(1, -hi) if hi is not None else 1, None if lo is None else -lo)
        if neg is not None:
            parts.append("-" + neg)
    if hi is None or hi >= 0:
        pos = uint_range(max(0, lo) if lo is not None else 0, hi)
        if pos is not None:
            parts.append(pos)
        if lo is None or lo <= 0:
            parts.append("-0")
    return alternation(parts) if parts else None


def _fraction_digits(lower: Bound, upper: Bound, nonempty: bool, places: int | None) -> str | None:
    """Digit strings s with lower <= 0.s <= upper (bounds: fraction digits without trailing zeros),
    non-zero digits only among the first `places` (None: anywhere); only non-empty ones when
    `nonempty`. None when no string qualifies."""
    if lower == ("", True):
        lower = None
    if places == 0 or (upper is not None and upper[0] == ""):  # only zeros may follow
        if lower is not None or (upper is not None and upper[0] == "" and not upper[1]):
            return None
        return "0+" if nonempty else "0*"
    if lower is None and upper is None:
        if places is None:
            return "[0-9]+" if nonempty else "[0-9]*"
        return f"[0-9]{{{int(nonempty)},{places}}}0*"
    if lower == ("", False) and upper is None:  # any positive fraction
        if places is None:
            return "0*[1-9][0-9]*"
        return alternation(
            [
                "0" * j + "[1-9]" + (f"[0-9]{{0,{places - j - 1}}}" if places - j > 1 else "") + "0*"
                for j in range(places)
            ]
        )
    parts: list[str] = [] if nonempty or lower is not None else [""]
    groups: list[tuple[int, int, Bound, Bound]] = []
    for d in range(10):
        step = _digit_step(d, lower, upper)
        if step is None:
            continue
        if groups and groups[-1][1] == d - 1 and groups[-1][2:] == step:
            groups[-1] = (groups[-1][0], d, *step)
        else:
            groups.append((d, d, *step))
    for first, last, low, up in groups:
        rest = _fraction_digits(low, up, False, None if places is None else places - 1)
        if rest is not None:
            parts.append(digit_class(first, last) + rest)
    return alternation(parts) if parts else None


def _digit_step(d: int, lower: Bound, upper: Bound) -> tuple[Bound, Bound] | None:
    """Bounds on the rest of a fraction whose next digit is d; None when d breaks a bound."""
    low: Bound = None
    if lower is not None:
        digits, incl = lower
        if digits == "":
            low = ("", incl) if d == 0 else None
        elif d < int(digits[0]):
            return None
        elif d == int(digits[0]):
            low = (digits[1:], incl)
    up: Bound = None
    if upper is not None:
        digits, incl = upper
        if d > int(digits[0]):
            return None
        if d == int(digits[0]):
            up = (digits[1:], incl)
    return low, up


def _fraction(lower: Bound, upper: Bound, places: int | None) -> str | None:
    """The `.digits` part of a number whose fraction satisfies the bounds (optional when a value
    with fraction 0 qualifies); None when none does."""
    low = None if lower == ("", True) else lower
    zero_ok = low is None and (upper is None or upper[0] != "" or upper[1])
    digits = _fraction_digits(lower, upper, True, places)
    if digits is None:
        return "" if zero_ok else None
    return f"(?:\\.{digits})?" if zero_ok else "\\." + digits


def _split(value: Decimal) -> tuple[int, str]:
    """Integer part and fraction digits (no trailing zeros) of a non-negative decimal."""
    text = format(value, "f")
    whole, _, frac = text.partition(".")
    return int(whole), frac.rstrip("0")


def _nonneg_range(
    lo: Decimal, lo_incl: bool, hi: Decimal | None, hi_incl: bool, places: int | None, fractional: bool = False
) -> str | None:
    """Non-negative plain decimals (`0|[1-9][0-9]*` with optional fraction) in the interval; with
    `fractional`, only those whose fraction is not 0 (the non-integers)."""
    if hi is not None and (lo > hi or (lo == hi and not (lo_incl and hi_incl))):
        return None

    def frac(lower: Bound, upper: Bound) -> str | None:
        if fractional and (lower is None or lower[0] == ""):
            lower = ("", False)
        return _fraction(lower, upper, places)

    ia, fa = _split(lo)
    parts = []
    if hi is not None:
        ib, fb = _split(hi)
        if ia == ib:
            return _join(str(ia), frac((fa, lo_incl), (fb, hi_incl)))
        parts.append(_join(str(ia), frac((fa, lo_incl), None)))
        middle = uint_range(ia + 1, ib - 1)
        if middle is not None:
            parts.append(middle + frac(None, None))
        parts.append(_join(str(ib), frac(None, (fb, hi_incl))))
    else:
        parts.append(_join(str(ia), frac((fa, lo_incl), None)))
        parts.append(f"{uint_range(ia + 1, None)}{frac(None, None)}")
    solid = [p for p in parts if p is not None]
    return alternation(solid) if solid else None


def _join(whole: str, fraction: str | None) -> str | None:
    return None if fraction is None else whole + fraction


def number_range(
    lo: Decimal | None,
    lo_excl: bool,
    hi: Decimal | None,
    hi_excl: bool,
    places: int | None = None,
    fractional: bool = False,
) -> str | None:
    """JSON numbers x with lo <(=) x <(=) hi (either bound None: open), with at most `places`
    significant fraction digits when given (multipleOf 10**-places), only non-integers when
    `fractional`; None when the interval is empty."""
    zero = Decimal(0)
    parts = []
    if lo is None or lo < 0 or (lo == 0 and not lo_excl):
        if hi is not None and hi < 0:
            y_lo, y_lo_incl = -hi, not hi_excl
        else:
            y_lo, y_lo_incl = zero, hi is None or hi > 0 or not hi_excl
        neg = _nonneg_range(y_lo, y_lo_incl, None if lo is None else -lo, not lo_excl, places, fractional)
        if neg is not None:
            parts.append("-" + neg)
    if hi is None or hi > 0 or (hi == 0 and not hi_excl):
        if lo is None or lo < 0:
            x_lo, x_lo_incl = zero, True
        else:
            x_lo, x_lo_incl = lo, not lo_excl
        pos = _nonneg_range(x_lo, x_lo_incl, hi, not hi_excl, places, fractional)
        if pos is not None:
            parts.append(pos)
    if not parts:
        return None
    body = alternation(parts)
    if lo in (None, zero) and hi in (None, zero) and places is None and not fractional:
        body = ("(?:" + body + ")" if len(parts) > 1 and not body.startswith("(?:") else body) + EXPONENT
    return body


def integer_range(lo: Decimal | None, lo_excl: bool, hi: Decimal | None, hi_excl: bool) -> str | None:
    """Canonical JSON integers in the interval (the bounds need not be integers)."""
    a = b = None
    if lo is not None:
        a = int(lo.to_integral_value(rounding="ROUND_CEILING"))
        if lo_excl and a == lo:
            a += 1
    if hi is not None:
        b = int(hi.to_integral_value(rounding="ROUND_FLOOR"))
        if hi_excl and b == hi:
            b -= 1
    return int_range(a, b)


def exact_number(value: Decimal) -> str:
    """Every plain-decimal spelling of one number: 1, 1.0, 1.00 ... (and -0 for 0)."""
    whole, frac = _split(abs(value))
    sign = "-?" if value == 0 else "-" if value < 0 else ""
    return f"{sign}{whole}" + (f"\\.{frac}0*" if frac else "(?:\\.0+)?")
