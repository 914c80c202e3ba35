"""Regex text -> byte terms (`regex_syntax`) against Python's `re` as the oracle.

A term matches bytes when its derivatives along them end in a nullable term; it must agree with
`re.fullmatch` (with `re.ASCII`: `\\d`, `\\s`, `\\w` are the ASCII classes here) on strings drawn
from each regex (hypothesis) and on arbitrary strings over an alphabet that touches every class edge.
"""

from __future__ import annotations

import itertools
import re
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.grammars import GrammarError
from loomlm.grammars.regex_syntax import regex_term, surely_nonempty
from loomlm.grammars.regex_terms import EMPTY, TermTable

REGEXES = [
    r'"name": ?',
    r"[a-z]+(?:-[a-z0-9]+)*",
    r"[^\x00-\x1f\"\\]{0,3}x",
    r"\d{2,4}|\s\w+",
    r"(?i:select|from)\s+[A-F0-9]{1,3}",
    r"(?i)ab[c-e]",
    r".+é?",
    r"(?s:.)a",
    r"\D\S\W",
    r"[^a-cé中]+",
    r"(?:😀|\u00e9|\\u[0-9a-fA-F]{4})*",
    r"a*?b+?c??",
    r"[\w.-]+@[\w-]+\.[a-z]{2,6}",
]
ALPHABET = 'aAbBcCdeEfFxyz09-_.@ \t\n"\\éÉ中😀\x00\x1fsSelectFROM'


def _matches(table: TermTable, term: int, text: str) -> bool:
    for b in text.encode():
        term = table.deriv(term, b)
        if term == EMPTY:
            return False
    return table.nullable[term]


@pytest.mark.parametrize("regex", REGEXES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_terms_agree_with_re(regex: str, data) -> None:
    table = TermTable()
    term = regex_term(table, regex)
    oracle = re.compile(regex, re.ASCII)  # \d \s \w are the ASCII classes here
    drawn = data.draw(st.from_regex(oracle, fullmatch=True))
    assert _matches(table, term, drawn), drawn
    other = data.draw(st.text(alphabet=ALPHABET, max_size=8))
    assert _matches(table, term, other) == (oracle.fullmatch(other) is not None), other


def test_ignore_case_argument_folds_case() -> None:
    table = TermTable()
    term = regex_term(table, "select", ignore_case=True)
    assert _matches(table, term, "SeLeCt") and not _matches(table, term, "selec")


@pytest.mark.parametrize(
    "regex, message",
    [
        ("(?:(?=a)[ab])*", "lookahead inside a repetition"),
        ("(?!(?=a)b)c", "lookahead inside a lookahead"),
        ("(?<!a)b", "lookbehinds"),
        ("^ab$", "anchors"),
        (r"(a)\1", "backreferences"),
        ("a((", "invalid regex"),
        ("(?>ab)", "atomic"),
    ],
)
def test_unreadable_regexes_are_refused_by_name(regex: str, message: str) -> None:
    with pytest.raises(GrammarError, match=message):
        regex_term(TermTable(), regex)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='ab"|()[]^?*+{}0,2\\.:', max_size=14))
def test_surely_nonempty_never_claims_a_regex_that_matches_empty(pattern: str) -> None:
    """The shortcut the lazy lowering takes instead of parsing: where it answers, `re` agrees."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # re's notes on "[[" and "--" in classes
            compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError):
        return
    if surely_nonempty(pattern):
        assert compiled.fullmatch("") is None, pattern


def test_surely_nonempty_answers_for_the_json_compilers_shapes() -> None:
    key_not_in = '"(?:(?:a(?:b)?|[^a"\\\\])[^"]*)?"'
    assert all(surely_nonempty(p) for p in ('"name" ?: ?', key_not_in, "\\{ ?", ",(?:a|)", "x[]|]y"))
    assert not any(surely_nonempty(p) for p in ('"a"|', "a?b", '"(?:a|b)"|c', "(a)", "a{0,2}", "a*"))


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.text(alphabet="ab", max_size=4).map(lambda w: f'"{w}"'), max_size=5),
    text=st.text(alphabet='ab"', max_size=7),
)
def test_minus_takes_exactly_the_words_out_of_a_string_language(words: list[str], text: str) -> None:
    """A quoted string minus some quoted words (the extra key of an object): matched by derivatives,
    every reached state live unless it is EMPTY (checked by reaching a nullable state)."""
    table = TermTable()
    term = table.minus(regex_term(table, '"[ab]*"'), tuple(w.encode() for w in words))
    expected = re.fullmatch('"[ab]*"', text) is not None and text not in words
    assert _matches(table, term, text) == expected
    state = term
    for b in text.encode():
        state = table.deriv(state, b)
        if state == EMPTY:
            break
        assert any(_matches(table, state, rest) for rest in ('"', 'a"', 'b"', 'aa"', 'ab"', 'ba"', 'bb"', "")), text


LOOKAHEADS = [
    r"(?!@@)[@a-z]+",
    r'"(?:(?!\.{1,2}")(?![^"]*/)[a-z./]+)"',  # a JSON pattern's `$` inside a lookahead: the closing quote
    r"(?!lucene\.|built\.).*",
    r"a(?=bc)[a-z]*",
    r"(?!a)a",
    r"x(?:(?!ab)[a-z]|c)",
    r"(?:a|(?!b)[a-c])c",
]


@pytest.mark.parametrize("regex", LOOKAHEADS)
def test_lookaheads_agree_with_re_and_dead_terms_are_found(regex: str) -> None:
    """Every string up to 4 characters over a small alphabet: the term matches exactly what `re` does,
    and `live` of every derivative reached says whether some continuation (up to 4 more) matches."""
    table = TermTable()
    term = regex_term(table, regex)
    oracle = re.compile(regex)
    words = ["".join(w) for n in range(5) for w in itertools.product('ab@.lcx/"', repeat=n)]
    assert all(_matches(table, term, w) == (oracle.fullmatch(w) is not None) for w in words)
    for prefix in words[:60]:
        state = term
        for b in prefix.encode():
            state = table.deriv(state, b)
        if state != EMPTY:
            assert table.live(state) == any(oracle.fullmatch(prefix + w) for w in words), prefix
