"""Lark-dialect EBNF -> `grammar_ir.Grammar`, read by lark's own grammar loader.

`lark.Lark` parses the text (rules, terminals, `?`/`*`/`+`/`[]`/`~` operators, templates,
`%import common.X`, `%ignore`, `%declare` is refused); its public `rules`, `terminals` and
`ignore_tokens` are the expanded grammar, which maps one to one onto the IR: a rule alternative is a
`Seq` of `Ref`s and `Term`s, a terminal keeps its regex (literal strings are escaped) and lark's `i`
flag becomes `Term.ignore_case`. Tree-shaping marks (`_rule`, `?rule`, `!rule`) do not change the
language and are dropped with the tree.
"""

from __future__ import annotations

import re

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.grammar_ir import Alt, Expr, Grammar, Ref, Seq, Term

MAX_GRAMMAR_TEXT = 1_000_000  # characters
# lark's common.lark spells these with a lookbehind (which no automaton reads); the same languages:
_LOOKAROUND_FREE = {
    "ESCAPED_STRING": r'"(?:[^"\\\n]|\\[^\n])*"',
    "_STRING_ESC_INNER": r'(?:[^"\\\n]|\\[^\n])*',
}


def ebnf_grammar(text: str, start: str = "start") -> Grammar:
    """The IR of a lark grammar (raises GrammarError with lark's message when it does not load)."""
    if not isinstance(text, str):
        raise GrammarError(f"an EBNF grammar must be a string, got {type(text).__name__}")
    if len(text) > MAX_GRAMMAR_TEXT:
        raise GrammarError(f"the EBNF grammar is longer than {MAX_GRAMMAR_TEXT} characters")
    try:
        import lark
    except ImportError:  # pragma: no cover - lark is a dependency
        raise GrammarError("EBNF grammars need the 'lark' package") from None
    try:
        parser = lark.Lark(text, start=start, parser="earley", lexer="dynamic")
    except lark.exceptions.GrammarError as exc:
        raise GrammarError(f"invalid EBNF grammar: {exc}") from None
    except lark.exceptions.LarkError as exc:
        raise GrammarError(f"invalid EBNF grammar: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # lark reports some syntax errors as other types
        raise GrammarError(f"invalid EBNF grammar: {type(exc).__name__}: {exc}") from None
    terminals = {t.name: _term(t) for t in parser.terminals}
    alternatives: dict[str, list[Expr]] = {}
    for rule in parser.rules:
        parts = []
        for sym in rule.expansion:
            if sym.is_term:
                if sym.name not in terminals:
                    raise GrammarError(f"terminal {sym.name!r} is declared but never defined (%declare)")
                parts.append(terminals[sym.name])
            else:
                parts.append(Ref(sym.name))
        alternatives.setdefault(rule.origin.name, []).append(Seq(tuple(parts)))
    rules: dict[str, Expr] = {name: Alt(tuple(alts)) for name, alts in alternatives.items()}
    if start not in rules:
        raise GrammarError(f"the EBNF grammar has no rule {start!r} (its start rule)")
    ignore = tuple(terminals[name] for name in parser.ignore_tokens if name in terminals)
    return Grammar(rules, start, ignore)


def _term(terminal) -> Term:
    pattern = terminal.pattern
    flags = set(pattern.flags)
    if flags - {"i"}:
        raise GrammarError(
            f"terminal {terminal.name}: regex flags {sorted(flags - {'i'})} are not supported (only 'i')"
        )
    regex = re.escape(pattern.value) if pattern.type == "str" else pattern.value
    if pattern.type != "str" and "(?<" in regex and terminal.name in _LOOKAROUND_FREE:
        regex = _LOOKAROUND_FREE[terminal.name]
    return Term(regex, ignore_case="i" in flags, name=terminal.name)
