"""The one internal grammar: named rules over terminals, where a terminal is a regex.

Every constraint input (lark EBNF, GBNF, JSON schema, structural tags, a plain regex) becomes a
`Grammar`; `earley.compile_grammar` lowers it to flat rules for the parser and the lexer.

Expressions (`Expr`) are frozen, hashable values:
- `Term(regex)`: one terminal (a Python-`re`-dialect regex read by interegular; `ignore_case` for
  lark's `"..."i`). A terminal whose regex matches the empty string is made optional by the lowering.
- `FreeText(avoid)`: one terminal of any text not containing the given strings.
- `Ref(name)`: a rule.
- `Seq(parts)`, `Alt(options)`, `Rep(expr, lo, hi)` (hi None: unbounded).

The builders `seq`, `alt` and `rep` also accept plain `str` parts (regex text): when every part is a
string they return a string (the regex of the whole), so the JSON-schema compiler builds one regex for
the regex path and an `Expr` tree as soon as a part is a grammar (a `Term` leaf or a `Ref`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from loomlm.grammars.errors import GrammarError


@dataclass(frozen=True)
class Term:
    regex: str
    ignore_case: bool = False
    name: str = field(default="", compare=False)
    # exact strings taken out of the regex's language (a JSON key that is none of the declared names);
    # only for regexes whose states' languages are infinite until they end (`TermTable.minus`)
    exclude: tuple[str, ...] = ()
    # the regex surely matches no empty string (a JSON value's): a lazily lexed terminal's regex is
    # then first parsed when the lexer reaches it, not at compile time to learn that
    nonempty: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class FreeText:
    """One terminal: any non-empty text that does not contain one of `avoid` (free text between tags)."""

    avoid: tuple[str, ...]


@dataclass(frozen=True)
class Ref:
    name: str


@dataclass(frozen=True, eq=False)  # identity: shared sub-trees stay cheap to hash
class Seq:
    parts: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)  # identity: shared sub-trees stay cheap to hash
class Alt:
    options: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)  # identity: shared sub-trees stay cheap to hash
class Rep:
    expr: Expr
    lo: int
    hi: int | None


Expr = Term | FreeText | Ref | Seq | Alt | Rep
Part = Expr | str  # str: regex text (see the module docstring)


@dataclass(frozen=True)
class Grammar:
    """`rules[name]` is the rule's expression; `start` names the rule the output must match whole;
    `ignore`: terminals (regexes) that may appear between any two terminals (lark's %ignore)."""

    rules: dict[str, Expr]
    start: str
    ignore: tuple[Term, ...] = ()
    # False for a compiler that only refers to rules it defines (JSON schemas): the walk over every
    # expression that finds undefined rules is then skipped (a few percent of a schema's compile)
    check_refs: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        if self.start not in self.rules:
            raise GrammarError(f"the grammar has no start rule {self.start!r}")
        for name, expr in self.rules.items() if self.check_refs else ():
            for ref in _refs(expr):
                if ref not in self.rules:
                    raise GrammarError(f"rule {name!r} refers to the undefined rule {ref!r}")


def _refs(expr: Expr) -> list[str]:
    out, todo, seen = [], [expr], set()
    while todo:  # iterative: JSON-schema grammars nest deeply and share sub-trees
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Ref):
            out.append(e.name)
        elif isinstance(e, Seq):
            todo.extend(e.parts)
        elif isinstance(e, Alt):
            todo.extend(e.options)
        elif isinstance(e, Rep):
            todo.append(e.expr)
    return out


def as_expr(part: Part) -> Expr:
    return Term(part) if isinstance(part, str) else part


def seq(*parts: Part) -> Part:
    """The concatenation of `parts` ("" parts are the empty string; runs of regex text merge)."""
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)
    flat: list[Expr] = []
    text = ""
    for p in parts:
        if isinstance(p, str):
            text += p
            continue
        if text:
            flat.append(Term(text))
            text = ""
        flat.extend(p.parts if isinstance(p, Seq) else (p,))
    if text:
        flat.append(Term(text))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(options: list[Part]) -> Part:
    """One of `options`; for regex text `(?:a|b)`, the part itself when alone, an "" option making
    the group optional."""
    if all(isinstance(p, str) for p in options):
        solid = list(dict.fromkeys(p for p in options if p != ""))
        optional = "" in options
        if not solid:
            return ""
        if len(solid) == 1 and not optional:
            return solid[0]
        return "(?:" + "|".join(solid) + ")" + ("?" if optional else "")
    uniq = list(dict.fromkeys(as_expr(o) if o != "" else Seq(()) for o in options))
    return uniq[0] if len(uniq) == 1 else Alt(tuple(uniq))


def rep(part: Part, lo: int, hi: int | None) -> Part:
    """`part` lo..hi times (hi None: unbounded)."""
    if hi == 0 or part == "":
        return ""
    if not isinstance(part, str):
        return part if (lo, hi) == (1, 1) else Rep(part, lo, hi)
    count = {(0, None): "*", (1, None): "+", (0, 1): "?", (1, 1): ""}.get((lo, hi))
    if count is None:
        count = f"{{{lo}}}" if lo == hi else f"{{{lo},{'' if hi is None else hi}}}"
    single = len(part) == 1 or re.fullmatch(r"\[[^\[\]]*\]|\\.", part)
    return part if count == "" else (part if single else f"(?:{part})") + count


def is_grammar(part: Part) -> bool:
    return not isinstance(part, str)


def renamed(expr: Expr, prefix: str) -> Expr:
    """`expr` with every rule reference prefixed (to merge several grammars into one)."""
    if isinstance(expr, Ref):
        return Ref(prefix + expr.name)
    if isinstance(expr, Seq):
        return Seq(tuple(renamed(p, prefix) for p in expr.parts))
    if isinstance(expr, Alt):
        return Alt(tuple(renamed(p, prefix) for p in expr.options))
    if isinstance(expr, Rep):
        return Rep(renamed(expr.expr, prefix), expr.lo, expr.hi)
    return expr
