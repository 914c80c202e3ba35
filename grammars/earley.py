"""Earley parsing over terminals, with hash-consed columns as persistent parser states.

`compile_grammar(grammar, limits)` lowers a `grammar_ir.Grammar` to flat rules (symbol >= 0: a
nonterminal; symbol < 0: terminal `-1 - symbol`), builds the terminals' byte terms and the lazy
`Lexer`, and returns a `CompiledGrammar`. Repetitions become left-recursive helper rules (Earley
handles left recursion in constant items per column; right recursion would grow a chain of origins).

A `Column` is the Earley item set after some terminals: items (rule, dot, origin) where origin is an
earlier `Column` or None for "this column". Columns are interned by their pending (not completed) items
and whether the input may end there, so two parses whose
futures are identical (the same pending rules at the same origins) are the same object: `Column`
identity is the parser-state key that masks are cached by, and an array's tenth element sees the same
column as its second. Columns never change once built; `scan` returns a new (interned) one.
Nullable symbols are handled as Aycock and Horspool do (predicting a nullable nonterminal also moves
the dot past it), so completion never looks into the column being built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.grammar_ir import Alt, Expr, FreeText, Grammar, Ref, Rep, Seq, Term
from loomlm.grammars.lexer import Lexer
from loomlm.grammars.limits import GrammarLimits
from loomlm.grammars.regex_syntax import matches_empty, regex_term, surely_nonempty
from loomlm.grammars.regex_terms import TermTable

Item = tuple  # (rule, dot, origin: Column | None)


class Column:
    __slots__ = ("__weakref__", "_scans", "accepting", "allowed", "by_next", "items", "lex_start")

    def __init__(self, items: frozenset, by_next: dict[int, list[Item]], accepting: bool):
        self.items = items
        self.by_next = by_next
        self.allowed = frozenset(-1 - s for s in by_next if s < 0)  # terminal ids expected next
        self.accepting = accepting
        self.lex_start = -3  # lexer start state, filled by the parser
        self._scans: dict = {}  # scan results, keyed by terminal id or terminal-id tuple


@dataclass
class CompiledGrammar:
    lhs: list[int]
    rhs: list[tuple[int, ...]]
    rules_of: list[list[int]]  # nonterminal -> its rules
    nullable: list[bool]
    nonterminal_names: list[str]
    lexer: Lexer
    ignore: frozenset[int]  # terminal ids of %ignore terminals
    max_items: int
    initial: Column = field(init=False)
    _columns: dict[tuple[frozenset, bool], Column] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.initial = self._close([(0, 0, None)])

    @property
    def num_columns(self) -> int:
        return len(self._columns)

    def lex_start(self, col: Column) -> int:
        if col.lex_start == -3:
            col.lex_start = self.lexer.start(col.allowed | self.ignore)
        return col.lex_start

    def scan(self, col: Column, tid: int) -> Column | None:
        """The column after terminal `tid` (None: the parser rejects it here)."""
        got = col._scans.get(tid, False)
        if got is not False:
            return got
        kernel = [(r, d + 1, col if o is None else o) for r, d, o in col.by_next.get(-1 - tid, ())]
        out = self._close(kernel) if kernel else None
        col._scans[tid] = out
        return out

    def scan_all(self, col: Column, tids: tuple[int, ...]) -> Column | None:
        """The column after one lexeme that every terminal in `tids` matches (None: none is expected)."""
        if len(tids) == 1:
            return self.scan(col, tids[0])
        key = ("all", tids)
        got = col._scans.get(key, False)
        if got is not False:
            return got
        kernel = list(
            dict.fromkeys(
                (r, d + 1, col if o is None else o) for tid in tids for r, d, o in col.by_next.get(-1 - tid, ())
            )
        )
        out = self._close(kernel) if kernel else None
        col._scans[key] = out
        return out

    def _close(self, kernel: list[Item]) -> Column:
        lhs, rhs, rules_of, nullable = self.lhs, self.rhs, self.rules_of, self.nullable
        items = set(kernel)
        work = list(items)
        by_next: dict[int, list[Item]] = {}
        while work:
            item = work.pop()
            r, d, o = item
            body = rhs[r]
            if d == len(body):
                if o is None:
                    continue  # a nullable completion: the predictor already moved past it
                head = lhs[r]
                for r2, d2, o2 in o.by_next.get(head, ()):
                    new = (r2, d2 + 1, o if o2 is None else o2)
                    if new not in items:
                        items.add(new)
                        work.append(new)
                continue
            sym = body[d]
            by_next.setdefault(sym, []).append(item)
            if sym >= 0:
                for r2 in rules_of[sym]:
                    new = (r2, 0, None)
                    if new not in items:
                        items.add(new)
                        work.append(new)
                if nullable[sym]:
                    new = (r, d + 1, o)
                    if new not in items:
                        items.add(new)
                        work.append(new)
            if len(items) > self.max_items:
                raise GrammarError(
                    f"one parser step needs more than {self.max_items} Earley items "
                    "(GrammarLimits.max_parser_items); the grammar is too ambiguous"
                )
        # Completed items have done their work (their parents were advanced above) and take no part in
        # what follows, so the column is interned by its pending items: otherwise an array's completed
        # element item, whose origin is the column before that element, would make every element's
        # column new and no mask would be reused along the array.
        accepting = any(r == 0 and d == 1 for r, d, _ in items)
        key = frozenset(item for item in items if item[1] < len(rhs[item[0]]))
        col = self._columns.get((key, accepting))
        if col is None:
            col = self._columns[(key, accepting)] = Column(key, by_next, accepting)
        return col


def compile_grammar(
    grammar: Grammar, limits: GrammarLimits | None = None, lazy_terminals: bool = False
) -> CompiledGrammar:
    """`lazy_terminals`: terminal regexes become byte terms only when the lexer first expects them
    (Python's regex parser checks them and tells which match the empty string up front, unless
    `surely_nonempty` can tell without it: such a regex is first parsed when it is lexed). For grammars whose
    regexes the compiler generated itself (JSON schemas): a large schema's first mask then costs only
    the terminals it can start with. Hand-written grammars keep eager terms, so that a terminal the
    lexer cannot read fails at compile time, not while decoding."""
    limits = limits or GrammarLimits()
    return _Lowering(grammar, limits, lazy_terminals).build()


class LazyTerms:
    """terminal id -> its start term (`TermTable.nonempty` of its regex), built on first access."""

    def __init__(self, terms: TermTable):
        self.terms = terms
        self.built: list[int | None] = []
        self.sources: list[tuple[str, bool, tuple[str, ...]]] = []

    def __len__(self) -> int:
        return len(self.built)

    def add(self, term: int | None, regex: str = "", ignore_case: bool = False, exclude: tuple[str, ...] = ()) -> None:
        self.built.append(term)
        self.sources.append((regex, ignore_case, exclude))

    def __getitem__(self, tid: int) -> int:
        got = self.built[tid]
        if got is None:
            regex, ignore_case, exclude = self.sources[tid]
            got = self.built[tid] = self.terms.nonempty(_term_of(self.terms, regex, ignore_case, exclude))
        return got


def _nullable(lhs: list[int], rhs: list[tuple[int, ...]], n: int) -> list[bool]:
    """Which nonterminals derive the empty string: a worklist over the rules' nonterminal counts (one
    pass, where a fixpoint over every rule took one pass per level of a deep schema)."""
    nullable = [False] * n
    waiting = [len(body) for body in rhs]  # symbols of the rule not yet known nullable
    users: list[list[int]] = [[] for _ in range(n)]
    todo = []
    for r, body in enumerate(rhs):
        if any(sym < 0 for sym in body):
            waiting[r] = -1  # a terminal: never nullable
            continue
        for sym in body:
            users[sym].append(r)
        if not body:
            todo.append(lhs[r])
    while todo:
        head = todo.pop()
        if nullable[head]:
            continue
        nullable[head] = True
        for r in users[head]:
            waiting[r] -= 1  # `users` lists a rule once per occurrence of the nonterminal
            if waiting[r] == 0:
                todo.append(lhs[r])
    return nullable


def _term_of(terms: TermTable, regex: str, ignore_case: bool, exclude: tuple[str, ...]) -> int:
    term = regex_term(terms, regex, ignore_case=ignore_case)
    return terms.minus(term, tuple(w.encode() for w in exclude)) if exclude else term


class _Lowering:
    def __init__(self, grammar: Grammar, limits: GrammarLimits, lazy_terminals: bool = False):
        self.g = grammar
        self.limits = limits
        self.lazy = lazy_terminals
        self.terms = TermTable()
        self.term_ids: dict[tuple, int] = {}  # (regex, ignore_case, exclude) -> terminal id
        self.term_start = LazyTerms(self.terms)
        self.term_names: list[str] = []
        self.term_nullable: list[bool] = []
        self.nt_ids: dict[str, int] = {}
        self.nt_names: list[str] = []
        self.lhs: list[int] = []
        self.rhs: list[tuple[int, ...]] = []
        self.memo: dict[Expr, int] = {}
        self.pending: list[tuple[int, Expr]] = []  # (helper nonterminal, expression to define it by)

    def build(self) -> CompiledGrammar:
        start = self.nt("$start")
        for name in self.g.rules:
            self.nt(name)
        self.rule(start, (self.nt(self.g.start),))
        for name, expr in self.g.rules.items():
            self.define(self.nt_ids[name], expr)
        while self.pending:  # helper rules of nested expressions, defined here, not by recursion
            self.define(*self.pending.pop())
        ignore = []
        for term in self.g.ignore:
            tid = self.terminal(term, allow_empty=False)
            ignore.append(tid)
        n = len(self.nt_names)
        rules_of: list[list[int]] = [[] for _ in range(n)]
        for r, head in enumerate(self.lhs):
            rules_of[head].append(r)
        nullable = _nullable(self.lhs, self.rhs, n)
        lexer = Lexer(self.terms, self.term_start, self.term_names, self.limits.max_lexer_states)
        return CompiledGrammar(
            self.lhs,
            self.rhs,
            rules_of,
            nullable,
            self.nt_names,
            lexer,
            frozenset(ignore),
            self.limits.max_parser_items,
        )

    def nt(self, name: str) -> int:
        i = self.nt_ids.get(name)
        if i is None:
            i = self.nt_ids[name] = len(self.nt_names)
            self.nt_names.append(name)
        return i

    def rule(self, head: int, body: tuple[int, ...]) -> None:
        self.lhs.append(head)
        self.rhs.append(body)
        if len(self.lhs) > self.limits.max_grammar_rules:
            raise GrammarError(
                f"the grammar needs more than {self.limits.max_grammar_rules} rules "
                "(GrammarLimits.max_grammar_rules); bounded repetitions with large bounds expand into rules"
            )

    def define(self, head: int, expr: Expr) -> None:
        options = expr.options if isinstance(expr, Alt) else (expr,)
        for option in options:
            self.rule(head, self.body(option))

    def body(self, expr: Expr) -> tuple[int, ...]:
        parts = expr.parts if isinstance(expr, Seq) else (expr,)
        return tuple(self.symbol(p) for p in parts)

    def terminal(self, term: Term | FreeText, allow_empty: bool = True) -> int:
        key = ("free", term.avoid) if isinstance(term, FreeText) else (term.regex, term.ignore_case, term.exclude)
        tid = self.term_ids.get(key)
        if tid is None:
            if isinstance(term, FreeText):
                t = self.terms.nonempty(self.terms.avoid(tuple(w.encode() for w in term.avoid if w)))
                term = Term("", name=f"text without {list(term.avoid)!r}")
                nullable = False
            elif self.lazy and allow_empty:
                empty = not (term.nonempty or surely_nonempty(term.regex)) and matches_empty(term.regex)
                t, nullable = None, empty and "" not in term.exclude
            else:
                t = _term_of(self.terms, term.regex, term.ignore_case, term.exclude)
                nullable = self.terms.nullable[t]
            if nullable and not allow_empty:
                raise GrammarError(f"terminal {term.name or term.regex!r} matches the empty string")
            tid = self.term_ids[key] = len(self.term_start)
            start = None if t is None else self.terms.nonempty(t)
            self.term_start.add(start, term.regex, term.ignore_case, term.exclude)
            self.term_nullable.append(nullable)
            self.term_names.append(term.name or term.regex)
            if len(self.term_start) > self.limits.max_grammar_rules:
                raise GrammarError(f"the grammar has more than {self.limits.max_grammar_rules} terminals")
        return tid

    def symbol(self, expr: Expr) -> int:
        if isinstance(expr, Ref):
            return self.nt_ids[expr.name]
        got = self.memo.get(expr)
        if got is not None:
            return got
        if isinstance(expr, (Term, FreeText)):
            tid = self.terminal(expr)
            sym = -1 - tid
            if self.term_nullable[tid]:
                head = self.helper("opt")
                self.rule(head, ())
                self.rule(head, (sym,))
                sym = head
        elif isinstance(expr, (Seq, Alt)):
            sym = self.helper("seq" if isinstance(expr, Seq) else "alt")
            self.pending.append((sym, expr))  # JSON-schema grammars nest hundreds deep
        elif isinstance(expr, Rep):
            sym = self.repeat(expr)
        else:
            raise GrammarError(f"not a grammar expression: {expr!r}")
        self.memo[expr] = sym
        return sym

    def helper(self, kind: str) -> int:
        return self.nt(f"${kind}{len(self.nt_names)}")

    def repeat(self, expr: Rep) -> int:
        item, lo, hi = self.symbol(expr.expr), expr.lo, expr.hi
        if hi is not None and hi < lo:
            raise GrammarError(f"repetition {{{lo},{hi}}}: the upper bound is below the lower one")
        if hi is None:  # star: S -> S item | ; then lo copies in front
            star = self.helper("star")
            self.rule(star, ())
            self.rule(star, (star, item))
            if lo == 0:
                return star
            head = self.helper("rep")
            self.rule(head, (item,) * lo + (star,))
            return head
        # at most k more: U_k -> U_{k-1} item | ""  (left recursive, one rule pair per count)
        upto = None
        for _ in range(hi - lo):
            nxt = self.helper("upto")
            self.rule(nxt, ())
            self.rule(nxt, ((upto,) if upto is not None else ()) + (item,))
            upto = nxt
        head = self.helper("rep")
        self.rule(head, (item,) * lo + ((upto,) if upto is not None else ()))
        return head
