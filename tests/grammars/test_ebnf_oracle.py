"""The grammar engine against lark itself, on each EBNF grammar of `loomlm.bench.ebnf_cases`.

Oracle: lark's Earley parser with the `dynamic_complete` lexer (every way of splitting the text into
terminals, the semantics of the engine). Strings are generated from the grammar by hypothesis (random
derivations with bounded depth, terminals drawn from their regexes, %ignore text between terminals)
and must be accepted byte by byte and token by token (the default model's tokenizer, then EOS);
mutations of them (a character deleted, inserted or replaced) must get lark's verdict.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from loomlm.bench.ebnf_cases import CASES, EbnfCase
from loomlm.grammars import REJECTED, Vocabulary, allowed_tokens, compile_ebnf
from tests.grammars.lark_sentences import LarkSentences

BYTES_VOCAB = Vocabulary(tuple(bytes([b]) for b in range(256)) + (b"",), frozenset({256}))


_GENERATORS = {c.name: LarkSentences(c.grammar) for c in CASES}
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
