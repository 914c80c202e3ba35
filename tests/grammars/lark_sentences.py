"""Random sentences of a lark grammar, and lark's verdict on strings: the oracle of the grammar tests."""

from __future__ import annotations

import re

import lark
from hypothesis import strategies as st

MAX_DEPTH = 5


class LarkSentences:
    """Random sentences of a lark grammar (a derivation tree of depth <= MAX_DEPTH, then the shallowest
    alternatives)."""

    def __init__(self, grammar: str):
        self.parser = lark.Lark(grammar, parser="earley", lexer="dynamic_complete")
        self.rules: dict[str, list[list]] = {}
        for rule in self.parser.rules:
            self.rules.setdefault(rule.origin.name, []).append(list(rule.expansion))
        self.terminals = {t.name: t.pattern for t in self.parser.terminals}
        self.ignore = [self.terminals[n] for n in self.parser.ignore_tokens]
        self.height = self._heights()

    def _heights(self) -> dict[str, int]:
        height: dict[str, int] = {}
        for _ in range(len(self.rules) + 1):
            for name, alts in self.rules.items():
                for alt in alts:
                    hs = [height.get(s.name, None) if not s.is_term else 0 for s in alt]
                    if None not in hs:
                        h = 1 + max(hs, default=0)
                        height[name] = min(height.get(name, h), h)
        return height

    def regex(self, pattern) -> str:
        text = re.escape(pattern.value) if pattern.type == "str" else pattern.value
        return f"(?i:{text})" if "i" in pattern.flags else text

    def sentence(self, draw) -> str:
        return self._expand(draw, self.parser.options.start[0], 0)

    def _expand(self, draw, name: str, depth: int) -> str:
        alts = self.rules[name]
        if depth >= MAX_DEPTH:
            best = min(self._alt_height(a) for a in alts)
            alts = [a for a in alts if self._alt_height(a) == best]
        alt = draw(st.sampled_from(alts))
        out = []
        for sym in alt:
            if sym.is_term:
                out.append(draw(st.from_regex(self.regex(self.terminals[sym.name]), fullmatch=True)))
            else:
                out.append(self._expand(draw, sym.name, depth + 1))
            if self.ignore and draw(st.booleans()):
                out.append(draw(st.sampled_from([" ", "  "])))
        return "".join(out)

    def _alt_height(self, alt: list) -> int:
        return max((0 if s.is_term else self.height.get(s.name, 99) for s in alt), default=0)

    def accepts(self, text: str) -> bool:
        try:
            self.parser.parse(text)
            return True
        except lark.exceptions.LarkError:
            return False
