"""The grammar engine against lark itself, on each EBNF grammar of `loomlm.bench.ebnf_cases`.

Oracle: lark's Earley parser with the `dynamic_complete` lexer (every way of splitting the text into
terminals, the semantics of the engine). Strings are generated from the grammar by hypothesis (random
derivations with bounded depth, terminals drawn from their regexes, %ignore text between terminals)
and must be accepted byte by byte and token by token (the default model's tokenizer, then EOS);
mutations of them (a character deleted, inserted or replaced) must get lark's verdict.
"""

from __future__ import annotations

import re

import lark
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from loomlm.bench.ebnf_cases import CASES, EbnfCase
from loomlm.grammars import REJECTED, Vocabulary, allowed_tokens, compile_ebnf

BYTES_VOCAB = Vocabulary(tuple(bytes([b]) for b in range(256)) + (b"",), frozenset({256}))
MAX_DEPTH = 5


class _Generator:
    """Random sentences of a lark grammar (a derivation tree of depth <= MAX_DEPTH, then the shallowest
    alternatives)."""

    def __init__(self, case: EbnfCase):
        self.parser = lark.Lark(case.grammar, parser="earley", lexer="dynamic_complete")
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


_GENERATORS = {c.name: _Generator(c) for c in CASES}
_GUIDES: dict[tuple[str, str], object] = {}


def _guide(case: EbnfCase, vocab: Vocabulary):
    key = (case.name, vocab.fingerprint)
    if key not in _GUIDES:
        _GUIDES[key] = compile_ebnf(case.grammar, vocab)
    return _GUIDES[key]


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(tokenizer)


def _walk_tokens(guide, ids: list[int]) -> bool:
    """Every token allowed by the mask and accepted by advance; EOS allowed at the end."""
    state = guide.initial_state
    for t in ids:
        if not allowed_tokens(guide, state)[t]:
            return False
        state = guide.advance(state, t)
        if state is REJECTED:
            return False
    eos = next(iter(guide.vocab.eos_token_ids))
    return bool(allowed_tokens(guide, state)[eos]) and guide.advance(state, eos) is not REJECTED


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_examples_agree_with_lark(case: EbnfCase, vocab: Vocabulary, tokenizer) -> None:
    gen = _GENERATORS[case.name]
    guide = _guide(case, vocab)
    for text in case.valid + case.invalid:
        assert gen.accepts(text) == (text in case.valid), text
        assert guide.matches(text) == (text in case.valid), text
    for text in case.valid:
        assert _walk_tokens(guide, tokenizer.encode(text, add_special_tokens=False)), text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_generated_strings_and_their_mutations(case: EbnfCase, vocab: Vocabulary, tokenizer, data) -> None:
    gen = _GENERATORS[case.name]
    text = gen.sentence(data.draw)
    assume(len(text) < 400 and gen.accepts(text))  # lark is the oracle of what the generator made
    byte_guide = _guide(case, BYTES_VOCAB)
    assert byte_guide.matches(text), text
    ids = tokenizer.encode(text, add_special_tokens=False)
    if vocab.decode_bytes(ids) == text.encode():  # characters the tokenizer cannot spell are skipped
        assert _walk_tokens(_guide(case, vocab), ids), text
    pos = data.draw(st.integers(0, len(text)))
    op = data.draw(st.sampled_from(["delete", "insert", "replace"]))
    char = data.draw(st.sampled_from(sorted(set(text + " ,()[]{}\"'-+*.:=x1"))))
    if op == "delete":
        mutated = text[:pos] + text[pos + 1 :]
    elif op == "insert":
        mutated = text[:pos] + char + text[pos:]
    else:
        mutated = text[:pos] + char + text[pos + 1 :]
    assert byte_guide.matches(mutated) == gen.accepts(mutated), (text, mutated)


def test_masks_match_the_byte_walk(vocab: Vocabulary) -> None:
    """A token is in the mask exactly when its bytes keep a parse alive (every token, a few states)."""
    guide = _guide(CASES[1], vocab)
    state = guide.initial_state
    for piece in (b"(", b"12", b" +", b" "):
        mask = allowed_tokens(guide, state)
        walk = np.array([bool(b) and guide.step_bytes(state, b) >= 0 for b in vocab.token_bytes])
        eos = list(vocab.eos_token_ids)
        walk[eos] = guide.is_accepting(state)
        assert (mask == walk).all()
        state = guide.step_bytes(state, piece)
