"""Regex text -> Thompson NFA over character classes, using interegular's parser.

interegular parses the pattern (Python `re` syntax, the subset a finite automaton can take) into a tree
of character groups, concatenations, alternations and bounded/unbounded repeats. We build our own NFA
from that tree, instead of interegular's FSM operations, so that determinisation runs under our state
and time budget (a blow-up such as `[ab]*a[ab]{20}` must fail fast with a clear error).

Dialect (what users get): `\\d`, `\\w`, `\\s` are ASCII classes; `.` excludes only "\\n"; lazy
quantifiers mean the same language as greedy ones; `\\uXXXX`, `\\UXXXXXXXX` and `\\x{...}` escapes are
accepted. Anchors, word boundaries, lookarounds, backreferences, conditionals, Unicode properties and
inline flags raise `GrammarError`: the whole output must match the pattern, so anchoring is implied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import interegular
from interegular import patterns as ip

from loomlm.grammars.errors import GrammarError
from loomlm.grammars.limits import Budget

CharGroup = tuple[frozenset, bool]  # (characters, negated)

_UNICODE_ESCAPE = re.compile(r"\\\\|\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})|\\x\{([0-9a-fA-F]{1,6})\}")


@dataclass
class NFA:
    """States 0..n-1. State s has epsilon edges `eps[s]` and at most one character edge
    `edges[s] = (group index, target)`. One start and one final state (Thompson form)."""

    eps: list[list[int]] = field(default_factory=list)
    edges: list[tuple[int, int] | None] = field(default_factory=list)
    groups: list[CharGroup] = field(default_factory=list)
    start: int = 0
    final: int = 0
    _group_ids: dict[CharGroup, int] = field(default_factory=dict)

    def new_state(self) -> int:
        self.eps.append([])
        self.edges.append(None)
        return len(self.eps) - 1

    def group_id(self, group: CharGroup) -> int:
        gid = self._group_ids.get(group)
        if gid is None:
            gid = self._group_ids[group] = len(self.groups)
            self.groups.append(group)
        return gid


def _replace_unicode_escapes(pattern: str) -> str:
    """interegular does not read \\u escapes: write those characters literally (special ASCII ones
    as \\xHH, which it does read)."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "\\\\":
            return m.group(0)
        code = int(m.group(1) or m.group(2) or m.group(3), 16)
        if code > 0x10FFFF:
            raise GrammarError(f"invalid regex {pattern!r}: escape {m.group(0)!r} is not a code point")
        return f"\\x{code:02x}" if code < 0x80 else chr(code)

    return _UNICODE_ESCAPE.sub(sub, pattern)


def parse_regex(pattern: str) -> ip.Pattern:
    """Parse with clear errors: syntax errors come from Python's `re`, unsupported features are named."""
    if not isinstance(pattern, str):
        raise GrammarError(f"a regex must be a string, got {type(pattern).__name__}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise GrammarError(f"invalid regex {pattern!r}: {exc}") from None
    if compiled.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE):
        raise GrammarError(f"regex {pattern!r}: inline flags such as (?i) are not supported")
    try:
        return interegular.parse_pattern(_replace_unicode_escapes(pattern))
    except GrammarError:
        raise
    except ip.Unsupported as exc:
        text = str(exc)
        if text in ("'^'", "'$'") or "\\b" in text or "\\A" in text or "\\Z" in text or "\\B" in text:
            text = (
                "anchors and word boundaries (^, $, \\b, \\A, \\Z) are not supported; "
                "the whole output must match the pattern, so anchoring is implied"
            )
        raise GrammarError(f"regex {pattern!r} uses a feature a finite automaton cannot take: {text}") from None
    except Exception as exc:  # interegular's parser raises a few internal types on bad syntax
        raise GrammarError(f"regex {pattern!r} could not be parsed: {type(exc).__name__}: {exc}") from None


def build_nfa(pattern: str, budget: Budget) -> NFA:
    tree = parse_regex(pattern)
    nfa = NFA()
    start, final = nfa.new_state(), nfa.new_state()
    nfa.start, nfa.final = start, final
    _Builder(nfa, budget, pattern).add(tree, start, final)
    return nfa


class _Builder:
    def __init__(self, nfa: NFA, budget: Budget, pattern: str):
        self.nfa = nfa
        self.budget = budget
        self.pattern = pattern

    def add(self, node: object, a: int, b: int) -> None:
        """Add states and edges so that the paths from `a` to `b` spell exactly `node`'s language."""
        nfa = self.nfa
        if len(nfa.eps) > 8 * self.budget.limits.max_states:
            self.budget.check_states(len(nfa.eps), "NFA")
        if isinstance(node, ip.Pattern):
            if node.added_flags or node.removed_flags:
                raise GrammarError(f"regex {self.pattern!r}: inline flags such as (?i) are not supported")
            for option in node.options:
                self.add(option, a, b)
            if not node.options:
                nfa.eps[a].append(b)
        elif isinstance(node, ip._Concatenation):
            cur = a
            for part in node.parts:
                if isinstance(part, ip._NonCapturing):
                    raise GrammarError(f"regex {self.pattern!r}: lookarounds are not supported")
                nxt = nfa.new_state()
                self.add(part, cur, nxt)
                cur = nxt
            nfa.eps[cur].append(b)
        elif isinstance(node, ip._Repeated):
            self._repeat(node.base, node.min, node.max, a, b)
        elif isinstance(node, ip._CharGroup):
            self._char(a, b, (frozenset(node.chars), bool(node.negated)))
        elif node is ip._DOT:
            self._char(a, b, (frozenset("\n"), True))
        elif node is ip._EMPTY:
            nfa.eps[a].append(b)
        else:
            raise GrammarError(f"regex {self.pattern!r}: unsupported construct {type(node).__name__}")

    def _char(self, a: int, b: int, group: CharGroup) -> None:
        mid = self.nfa.new_state()  # a fresh state keeps "at most one character edge per state"
        self.nfa.eps[a].append(mid)
        self.nfa.edges[mid] = (self.nfa.group_id(group), b)

    def _repeat(self, base: object, lo: int, hi: int | None, a: int, b: int) -> None:
        nfa = self.nfa
        cur = a
        for _ in range(lo):
            nxt = nfa.new_state()
            self.add(base, cur, nxt)
            cur = nxt
        if hi is None:  # cur -(base)-> loop back to cur, or leave
            body_end = nfa.new_state()
            loop = nfa.new_state()
            nfa.eps[cur].append(loop)
            self.add(base, loop, body_end)
            nfa.eps[body_end].append(loop)
            nfa.eps[loop].append(b)
            return
        for _ in range(hi - lo):  # each optional copy may be skipped straight to the end
            nfa.eps[cur].append(b)
            nxt = nfa.new_state()
            self.add(base, cur, nxt)
            cur = nxt
        nfa.eps[cur].append(b)
