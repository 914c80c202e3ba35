"""Token index and guides: stepping token by token accepts exactly the tokenizations of matching strings."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.grammars import (
    FINISHED,
    REJECTED,
    GrammarError,
    Guide,
    Vocabulary,
    allowed_tokens,
    bitmask_words,
    compile_choices,
    compile_regex,
    compile_type,
    escape_literal,
)
from loomlm.grammars.guide import FLOAT_REGEX, INT_REGEX

EOS = 0
# A tiny vocabulary with multi-character tokens and both halves of a two-byte character.
TOKENS = {
    EOS: b"",
    1: "a",
    2: "b",
    3: "ab",
    4: "ba",
    5: "1",
    6: "12",
    7: ".",
    8: "a.",
    9: '"',
    10: b"\xc3",
    11: b"\xa9",
    12: "é",
    13: "aab",
    14: "-",
    15: " ",
}
TINY = Vocabulary.from_dict(TOKENS, eos_token_ids=[EOS])
TINY_PATTERNS = [r"(ab)*a?", r"a+b?\.?", r"-?[0-9]+(\.[0-9]+)?", r'"[abé]*"', r"(a|é)b{1,3}", r"[^a]*", r"ba|ab a"]


def _walk(guide, seq: tuple[int, ...]) -> bool:
    """True when every token is allowed in turn and the end is accepting."""
    state = guide.initial_state
    for tok in seq:
        if not guide.allowed_tokens(state)[tok] or not guide.is_allowed(state, tok):
            return False
        state = guide.advance(state, tok)
    return guide.is_accepting(state)


@pytest.mark.parametrize("pattern", TINY_PATTERNS)
def test_walks_accept_exactly_the_tokenizations_of_matches(pattern: str) -> None:
    guide = compile_regex(pattern, TINY)
    oracle = re.compile(pattern)
    ids = [i for i in TOKENS if i != EOS]
    for length in range(0, 4):
        for seq in itertools.product(ids, repeat=length):
            data = TINY.decode_bytes(seq)
            try:
                text = data.decode("utf-8")
                expected = oracle.fullmatch(text) is not None
            except UnicodeDecodeError:
                expected = False
            assert _walk(guide, seq) == expected, (pattern, seq, data)


@pytest.mark.parametrize("pattern", TINY_PATTERNS)
def test_eos_is_allowed_exactly_in_accepting_states(pattern: str) -> None:
    guide = compile_regex(pattern, TINY)
    for state in range(guide.num_states):
        allowed = guide.allowed_tokens(state)
        if allowed.sum() - allowed[EOS] == 0 and not guide.is_accepting(state):
            # A dead end of this tiny vocabulary (no token spells any continuation): EOS is the way out.
            assert allowed[EOS]
            continue
        assert allowed[EOS] == guide.is_accepting(state)
        if guide.is_accepting(state):
            assert guide.advance(state, EOS) == FINISHED
    assert guide.is_finished(FINISHED) and not guide.allowed_tokens(FINISHED).any()


def test_bitmask_and_bool_mask_agree() -> None:
    guide = compile_regex(r"-?[0-9]+(\.[0-9]+)?", TINY)
    for state in range(guide.num_states):
        bits = guide.allowed_bitmask(state)
        unpacked = np.unpackbits(bits.view(np.uint8), bitorder="little")[: TINY.size].astype(bool)
        assert (unpacked == guide.allowed_tokens(state)).all()


def test_disallowed_token_is_rejected() -> None:
    guide = compile_regex("ab", TINY)
    assert guide.advance(guide.initial_state, 2) is REJECTED
    assert guide.advance(guide.initial_state, 10**6) is REJECTED  # outside the vocabulary
    done = guide.advance(guide.advance(guide.initial_state, 3), EOS)
    assert done == FINISHED and guide.advance(done, 1) is REJECTED  # nothing follows EOS


@pytest.mark.parametrize("pattern", TINY_PATTERNS)
def test_dfa_guide_implements_the_protocol(pattern: str) -> None:
    """fill_bitmask writes the allowed set; equal mask keys mean equal masks (the cache invariant)."""
    guide = compile_regex(pattern, TINY)
    assert isinstance(guide, Guide)
    rows: dict = {}
    for state in [*range(guide.num_states), FINISHED]:
        out = np.full(bitmask_words(TINY.size), 7, dtype=np.int32)
        guide.fill_bitmask(state, out)
        assert (out == guide.allowed_bitmask(state)).all()
        assert (allowed_tokens(guide, state) == guide.allowed_tokens(state)).all()
        key = guide.mask_key(state)
        hash(key)
        assert (rows.setdefault(key, out) == out).all(), (state, key)
    assert len(rows) == guide.index.num_classes + 1  # FINISHED (nothing allowed) has a key of its own


def test_choices_and_types() -> None:
    guide = compile_choices(["ab", "a.", ""], TINY)
    assert guide.matches("ab") and guide.matches("a.") and guide.matches("") and not guide.matches("a")
    s = guide.advance(guide.initial_state, 1)
    assert not guide.is_accepting(s) and guide.forced_bytes(s) == b""
    assert guide.is_finished(guide.advance(guide.initial_state, 3))
    for bad in ([], "ab", [1], None):
        with pytest.raises(GrammarError, match="choices"):
            compile_choices(bad, TINY)  # type: ignore[arg-type]
    assert compile_type(int, TINY).matches("-12") and not compile_type(int, TINY).matches("012")
    assert compile_type(bool, TINY).matches("True")
    with pytest.raises(GrammarError, match="typed shortcut"):
        compile_type(list, TINY)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=12))
def test_escape_literal_matches_only_itself(text: str) -> None:
    assert re.fullmatch(escape_literal(text), text)
    guide = compile_choices([text], TINY)
    assert guide.matches(text) and not guide.matches(text + "a")


def test_regex_typed_shortcuts_parse_with_python() -> None:
    for s in ["0", "-7", "1234567890123456789"]:
        assert re.fullmatch(INT_REGEX, s) and int(s) is not None
    for s in ["0.5", "-1e+10", "3", "2.25E-3"]:
        assert re.fullmatch(FLOAT_REGEX, s) and float(s) is not None


# ---- the real vocabulary -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(tokenizer)


@pytest.mark.parametrize("pattern", [r'\{"a": "[^"]*", "b": -?\d+\}', r"[a-zé€😀 ]{1,5}\.", r"(yes|no|maybe)"])
def test_index_matches_brute_force_over_the_real_vocabulary(vocab: Vocabulary, pattern: str) -> None:
    guide = compile_regex(pattern, vocab)
    eos = sorted(vocab.eos_token_ids)
    for state in range(guide.num_states):
        brute = np.array([bool(b) and guide.step_bytes(state, b) >= 0 for b in vocab.token_bytes])
        brute[eos] = guide.is_accepting(state)
        assert (guide.allowed_tokens(state) == brute).all(), state
        for tok in np.flatnonzero(brute)[::97]:
            if int(tok) not in vocab.eos_token_ids:
                assert guide.advance(state, int(tok)) == guide.step_bytes(state, vocab.token_bytes[tok])


def test_real_vocabulary_has_no_dead_ends(vocab: Vocabulary) -> None:
    guide = compile_regex(r'"[^"]*"|[€😀]+', vocab)  # multi-byte states are continued by byte tokens
    allowed_non_eos = guide.index.num_allowed
    assert (allowed_non_eos[~guide.dfa.accepting] > 0).all()


def test_tokenizer_encodings_of_matches_walk_through(vocab: Vocabulary, tokenizer) -> None:
    guide = compile_regex(r"[a-zé€😀 ]{1,12}\.", vocab)
    for text in ["héllo wörld.", "€😀 a.", "a.", "😀😀😀."]:
        if not guide.matches(text):
            continue
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert _walk(guide, tuple(ids)), (text, ids)
    assert not _walk(guide, tuple(tokenizer.encode("ab", add_special_tokens=False)))


REAL_PATTERNS = [
    r'\{"id": [0-9]{1,4}, "tag": "[a-zé ]{0,6}"\}',
    r"[A-Z][a-z]{1,6}( [a-z]{1,5}){0,2}\.",
    r"(yes|no|maybe)!?",
    r"[0-9]{1,3}(\.[0-9]{1,2})?(€|😀)",
]
_REAL_GUIDES: dict[str, object] = {}


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_tokenizations_of_matches_walk_and_of_non_matches_do_not(
    vocab: Vocabulary, tokenizer, data: st.DataObject
) -> None:
    pattern = data.draw(st.sampled_from(REAL_PATTERNS))
    if pattern not in _REAL_GUIDES:
        _REAL_GUIDES[pattern] = compile_regex(pattern, vocab)
    guide = _REAL_GUIDES[pattern]
    text = data.draw(st.from_regex(re.compile(pattern), fullmatch=True))
    assert _walk(guide, tuple(tokenizer.encode(text, add_special_tokens=False))), text
    cut = data.draw(st.integers(0, len(text)))
    other = text[:cut] + data.draw(st.sampled_from(["x", "", "\n", "é", '"', "9"])) + text[cut + 1 :]
    walked = _walk(guide, tuple(tokenizer.encode(other, add_special_tokens=False)))
    assert walked == (re.fullmatch(pattern, other) is not None), other
