"""GBNF (llama.cpp's grammar format, also XGrammar's and SGLang's `ebnf` dialect) -> `grammar_ir.Grammar`.

The text is parsed by lark (LALR, with the meta-grammar `_GBNF` below): rules `name ::= body`, where a
body has alternatives `|`, sequences, groups `( )`, string literals `"..."`, character classes
`[...]` / `[^...]`, `.` (any character), rule names, and the quantifiers `*`, `+`, `?`, `{m}`, `{m,}`,
`{m,n}`; `#` starts a comment. The start rule is `root`. Newlines are plain whitespace: a rule ends
where the next `name ::=` begins. Literals and classes become `Term`s (escapes `\\n \\t \\r \\\\ \\"
\\] \\xHH \\uHHHH \\UHHHHHHHH` decoded), names `Ref`s; whitespace is never implicit (as in GBNF).

`looks_like_gbnf(text)` tells the formats apart for the `ebnf` parameter: a GBNF grammar defines its
rules with `::=`, lark with `:`.
"""

from __future__ import annotations

import re

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.grammar_ir import Expr, Grammar, Ref, alt, as_expr, rep, seq

_GBNF = r"""
start: rule*
rule: RULE_START alternatives
alternatives: sequence ("|" sequence)*
sequence: item*
item: atom QUANTIFIER?
?atom: STRING -> literal
     | CLASS -> char_class
     | NAME -> ref
     | "." -> any_char
     | "(" alternatives ")" -> group
RULE_START.2: /[A-Za-z_][A-Za-z0-9_-]*[ \t]*::=/
QUANTIFIER: /[*+?]/ | /\{[ \t]*[0-9]+[ \t]*(,[ \t]*[0-9]*[ \t]*)?\}/
STRING: /"(\\.|[^"\\])*"/
CLASS: /\[\^?\]?(\\.|[^\]\\])*\]/
NAME: /[A-Za-z_][A-Za-z0-9_-]*/
COMMENT: /#[^\n]*/
%ignore /[ \t\r\n]+/
%ignore COMMENT
"""

_RULE_LINE = re.compile(r"^[ \t]*[A-Za-z_][A-Za-z0-9_-]*[ \t]*::=", re.MULTILINE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "b": "\b", "0": "\0"}
_ESCAPES.update({c: c for c in "\\\"'[]-^/.*+?(){}|"})
_HEX = {"x": 2, "u": 4, "U": 8}
_PARSER = None


def looks_like_gbnf(text: str) -> bool:
    return bool(_RULE_LINE.search(text))


def gbnf_grammar(text: str, start: str = "root") -> Grammar:
    """The IR of a GBNF grammar (GrammarError naming the problem and where)."""
    import lark

    global _PARSER
    if _PARSER is None:
        _PARSER = lark.Lark(_GBNF, parser="lalr")
    try:
        tree = _PARSER.parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        where = f"line {exc.line}, column {exc.column}"
        raise GrammarError(f"invalid GBNF grammar at {where}: {_snippet(exc, text)}") from None
    except lark.exceptions.LarkError as exc:
        raise GrammarError(f"invalid GBNF grammar: {exc}") from None
    rules: dict[str, Expr] = {}
    for node in tree.children:
        head, body = node.children
        name = head[: head.index("::=")].strip()
        if name in rules:
            raise GrammarError(f"GBNF rule {name!r} is defined twice")
        rules[name] = as_expr(_alternatives(body))
    if start not in rules:
        raise GrammarError(f"the GBNF grammar has no rule {start!r} (its start rule)")
    return Grammar(rules, start, ())  # checks that every rule used is defined


def _snippet(exc, text: str) -> str:
    got = exc.get_context(text, span=30).strip().splitlines()
    return got[0] if got else "unexpected input"


def _alternatives(node):
    return alt([_sequence(s) for s in node.children])


def _sequence(node):
    return seq(*[_item(i) for i in node.children]) if node.children else ""


def _item(node):
    part = _atom(node.children[0])
    if len(node.children) == 1:
        return part
    q = str(node.children[1])
    if q in "*+?":
        lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[q]
    else:
        body = q.strip("{} \t").split(",")
        lo = int(body[0])
        hi = lo if len(body) == 1 else (int(body[1]) if body[1].strip() else None)
        if hi is not None and hi < lo:
            raise GrammarError(f"GBNF quantifier {q}: the upper bound is below the lower one")
    return rep(part, lo, hi)


def _atom(node):
    kind = node.data
    if kind == "literal":
        text = _unescape(str(node.children[0])[1:-1])
        return re.escape(text) if text else ""
    if kind == "char_class":
        return _class_regex(str(node.children[0]))
    if kind == "ref":
        return Ref(str(node.children[0]))
    if kind == "any_char":
        return "[\\s\\S]"
    return _alternatives(node.children[0])  # group


def _unescape(body: str) -> str:
    return "".join(chr(c) for c, _ in _code_points(body))


def _code_points(body: str) -> list[tuple[int, bool]]:
    """(code point, escaped) for each character of a literal or class body."""
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append((ord(ch), False))
            i += 1
            continue
        if i + 1 >= len(body):
            raise GrammarError(f"GBNF escape at the end of {body!r}")
        esc = body[i + 1]
        if esc in _HEX:
            digits = body[i + 2 : i + 2 + _HEX[esc]]
            if len(digits) != _HEX[esc] or not re.fullmatch("[0-9A-Fa-f]+", digits) or int(digits, 16) > 0x10FFFF:
                raise GrammarError(f"GBNF escape \\{esc}{digits} is malformed")
            out.append((int(digits, 16), True))
            i += 2 + _HEX[esc]
        elif esc in _ESCAPES:
            out.append((ord(_ESCAPES[esc]), True))
            i += 2
        else:
            raise GrammarError(f"GBNF escape \\{esc} is not supported")
    return out


def _class_regex(token: str) -> str:
    negated = token.startswith("[^")
    points = _code_points(token[2:-1] if negated else token[1:-1])
    parts, i = [], 0
    while i < len(points):
        lo = points[i][0]
        if i + 2 < len(points) and points[i + 1] == (ord("-"), False):
            hi = points[i + 2][0]
            if hi < lo:
                raise GrammarError(f"GBNF character class {token}: range out of order")
            parts.append(f"{_class_char(lo)}-{_class_char(hi)}")
            i += 3
        else:
            parts.append(_class_char(lo))
            i += 1
    if not parts:
        raise GrammarError(f"GBNF character class {token} is empty")
    return ("[^" if negated else "[") + "".join(parts) + "]"


def _class_char(code: int) -> str:
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    ch = chr(code)
    return "\\" + ch if ch in "\\]^-[" else ch
