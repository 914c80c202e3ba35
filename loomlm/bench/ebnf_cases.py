"""The EBNF grammars (lark dialect) that the grammar benchmark and the oracle tests share.

Each case: a lark grammar, the same language in GBNF (what XGrammar reads in
`python -m loomlm.bench grammar-corpus`; start rule `root`), and a few strings both accept and
reject. Checked against lark itself in tests/grammars/test_ebnf_oracle.py (which also generates and
mutates strings from the grammar) and, for the GBNF text, in tests/grammars/test_gbnf.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EbnfCase:
    name: str
    grammar: str  # lark dialect
    gbnf: str  # the same language in GBNF (XGrammar's and llama.cpp's dialect, start rule `root`)
    valid: tuple[str, ...]
    invalid: tuple[str, ...]


JSON = EbnfCase(
    "json",
    r"""
?start: value
?value: object | array | string | SIGNED_NUMBER | "true" | "false" | "null"
array  : "[" [value ("," value)*] "]"
object : "{" [pair ("," pair)*] "}"
pair   : string ":" value
string : ESCAPED_STRING
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
""",
    r"""
root   ::= ws value ws
value  ::= object | array | string | number | "true" | "false" | "null"
array  ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
object ::= "{" ws ( pair ws ( "," ws pair ws )* )? "}"
pair   ::= string ws ":" ws value
string ::= "\"" ( [^"\\\n] | "\\" [^\n] )* "\""
number ::= [+\-]? ( [0-9]+ ( "." [0-9]* )? | "." [0-9]+ ) ( [eE] [+\-]? [0-9]+ )?
ws     ::= [ \t\f\r\n]*
""",
    ('{"a": [1, 2.5, -3e2], "b": {"c": null}}', "[true, false]", '"x"', "[]"),
    ('{"a" 1}', "[1,]", "{,}", "tru"),
)

ARITHMETIC = EbnfCase(
    "arithmetic",
    r"""
start: sum
?sum: sum "+" product | sum "-" product | product
?product: product "*" atom | product "/" atom | atom
?atom: NUMBER | "-" atom | "(" sum ")"
%import common.NUMBER
%import common.WS_INLINE
%ignore WS_INLINE
""",
    r"""
root    ::= ws sum ws
sum     ::= product ( ws [+\-] ws product )*
product ::= atom ( ws [*/] ws atom )*
atom    ::= number | "-" ws atom | "(" ws sum ws ")"
number  ::= ( [0-9]+ ( "." [0-9]* )? | "." [0-9]+ ) ( [eE] [+\-]? [0-9]+ )?
ws      ::= [ \t]*
""",
    ("1+2*3", "(1 + 2) * -3", "4/2/1", "-(-(7))"),
    ("1+", "*2", "(1", "1 2"),
)

SQL = EbnfCase(
    "sql_select",
    r"""
start: "SELECT"i columns "FROM"i NAME where? order? limit?
columns: "*" | NAME ("," NAME)*
where: "WHERE"i condition
condition: comparison (("AND"i | "OR"i) comparison)*
comparison: NAME OP value
value: NAME | NUMBER | STRING
order: "ORDER"i "BY"i NAME ("ASC"i | "DESC"i)?
limit: "LIMIT"i INT
OP: "=" | "<>" | "<=" | ">=" | "<" | ">"
STRING: "'" /[^']*/ "'"
NAME: /[a-z_][a-z0-9_]*/
%import common.NUMBER
%import common.INT
%import common.WS
%ignore WS
""",
    r"""
root       ::= ws select ws columns ws from ws name ( ws where )? ( ws order )? ( ws limit )? ws
columns    ::= "*" | name ( ws "," ws name )*
where      ::= [wW][hH][eE][rR][eE] ws condition
condition  ::= comparison ( ws ( [aA][nN][dD] | [oO][rR] ) ws comparison )*
comparison ::= name ws op ws value
value      ::= name | number | string
order      ::= [oO][rR][dD][eE][rR] ws [bB][yY] ws name ( ws ( [aA][sS][cC] | [dD][eE][sS][cC] ) )?
limit      ::= [lL][iI][mM][iI][tT] ws [0-9]+
select     ::= [sS][eE][lL][eE][cC][tT]
from       ::= [fF][rR][oO][mM]
op         ::= "=" | "<>" | "<=" | ">=" | "<" | ">"
string     ::= "'" [^']* "'"
name       ::= [a-z_] [a-z0-9_]*
number     ::= ( [0-9]+ ( "." [0-9]* )? | "." [0-9]+ ) ( [eE] [+\-]? [0-9]+ )?
ws         ::= [ \t\f\r\n]*
""",
    (
        "SELECT * FROM users",
        "select id, name from users where age >= 18 and name <> 'bob' order by name desc limit 10",
    ),
    ("SELECT FROM users", "SELECT * users", "SELECT * FROM users LIMIT x"),
)

NESTED_LISTS = EbnfCase(
    "nested_lists",
    r"""
start: list
list: "[" [item ("," item)*] "]"
?item: INT | list
%import common.INT
%import common.WS_INLINE
%ignore WS_INLINE
""",
    r"""
root ::= ws list ws
list ::= "[" ws ( item ws ( "," ws item ws )* )? "]"
item ::= [0-9]+ | list
ws   ::= [ \t]*
""",
    ("[1, [2, [3]]]", "[]", "[[[[]]], 4]"),
    ("[1, [2]", "[1,,2]", "1"),
)

CHESS = EbnfCase(
    "chess_moves",
    r"""
start: turn (" " turn)* (" " RESULT)?
turn: MOVE_NUMBER " " move (" " move)?
move: PIECE_MOVE | PAWN_MOVE | CASTLE
MOVE_NUMBER: /[1-9][0-9]*\./
PIECE_MOVE: /[KQRBN][a-h]?[1-8]?x?[a-h][1-8][+#]?/
PAWN_MOVE: /([a-h]x)?[a-h][1-8](=[QRBN])?[+#]?/
CASTLE: /O-O(-O)?[+#]?/
RESULT: "1-0" | "0-1" | "1/2-1/2"
""",
    r"""
root        ::= turn ( " " turn )* ( " " result )?
turn        ::= move-number " " move ( " " move )?
move        ::= piece-move | pawn-move | castle
move-number ::= [1-9] [0-9]* "."
piece-move  ::= [KQRBN] [a-h]? [1-8]? "x"? [a-h] [1-8] [+#]?
pawn-move   ::= ( [a-h] "x" )? [a-h] [1-8] ( "=" [QRBN] )? [+#]?
castle      ::= "O-O" "-O"? [+#]?
result      ::= "1-0" | "0-1" | "1/2-1/2"
""",
    ("1. e4 e5 2. Nf3 Nc6 3. Bb5 a6", "1. d4 d5 2. c4 dxc4 3. O-O-O 1-0", "1. e8=Q+"),
    ("1. e9", "e4 e5", "1. Zf3", "1.e4"),
)

CASES = (JSON, ARITHMETIC, SQL, NESTED_LISTS, CHESS)
