"""GBNF input (llama.cpp's and XGrammar's dialect): the reader, its errors, and the language it gives.

Oracles: Python's `re` for grammars that are regular (the same language written as a regex), and lark
for the five shared EBNF cases, whose GBNF translations (`EbnfCase.gbnf`) must accept exactly what
lark accepts on generated strings and their mutations.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomlm.bench.ebnf_cases import CASES
from loomlm.grammars import GrammarError, GrammarSpec, Vocabulary, compile_cfg, compile_ebnf
from loomlm.grammars.cache import compile_spec
from loomlm.grammars.gbnf import gbnf_grammar, looks_like_gbnf
from loomlm.grammars.limits import GrammarLimits
from tests.grammars.lark_sentences import LarkSentences

BYTES_VOCAB = Vocabulary(tuple(bytes([b]) for b in range(256)) + (b"",), frozenset({256}))

# A regular GBNF grammar and the same language as a Python regex.
REGULAR = r"""
# an identifier list, with every construct of the format
root   ::= item ( ", " item ){0,3} end   # a comment after a rule
item   ::= [a-zA-Z_] [a-zA-Z0-9_\-]* | number
       | "\"" [^"\\\x00-\x1f]{1,4} "\""
number ::= "-"? [0-9]+ ("." [0-9]{1,2})?
end    ::= "!" | "\u00e9" | "" | [\]\t]
"""
REGULAR_RE = re.compile(
    r'(?:[a-zA-Z_][a-zA-Z0-9_\-]*|-?[0-9]+(?:\.[0-9]{1,2})?|"[^"\\\x00-\x1f]{1,4}")'
    r'(?:, (?:[a-zA-Z_][a-zA-Z0-9_\-]*|-?[0-9]+(?:\.[0-9]{1,2})?|"[^"\\\x00-\x1f]{1,4}")){0,3}(?:!|\u00e9|[\]\t])?'
)


@pytest.fixture(scope="module")
def regular():
    return compile_cfg(gbnf_grammar(REGULAR), BYTES_VOCAB)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.from_regex(REGULAR_RE, fullmatch=True))
def test_strings_of_the_regex_are_accepted(regular, text: str) -> None:
    assert regular.matches(text), text


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet='ab_-9.", !\\]\t\u00e9', max_size=14))
def test_any_string_gets_the_regex_verdict(regular, text: str) -> None:
    assert regular.matches(text) == (REGULAR_RE.fullmatch(text) is not None), text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_translations_of_the_shared_cases_agree_with_their_examples(case) -> None:
    guide = compile_ebnf(case.gbnf, BYTES_VOCAB)
    assert "GBNF" in guide.description
    for text in case.valid:
        assert guide.matches(text), text
    for text in case.invalid:
        assert not guide.matches(text), text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_translations_get_lark_verdicts_on_generated_strings(case, data) -> None:
    gen = _SENTENCES[case.name]
    text = gen.sentence(data.draw)
    pos = data.draw(st.integers(0, len(text)))
    char = data.draw(st.sampled_from(sorted(set(text + " ,()[]{}\"'-+*.:=x1"))))
    guide = _case_guide(case.name, case.gbnf)
    for candidate in (text, text[:pos] + char + text[pos:], text[:pos] + text[pos + 1 :]):
        if len(candidate) < 400:
            assert guide.matches(candidate) == gen.accepts(candidate), candidate


_CASE_GUIDES: dict[str, object] = {}
_SENTENCES = {c.name: LarkSentences(c.grammar) for c in CASES}


def _case_guide(name: str, text: str):
    if name not in _CASE_GUIDES:
        _CASE_GUIDES[name] = compile_ebnf(text, BYTES_VOCAB)
    return _CASE_GUIDES[name]


def test_formats_are_told_apart() -> None:
    assert looks_like_gbnf('root ::= "a"') and looks_like_gbnf('# c\n  my-rule::= "a"\nroot ::= my-rule')
    assert not looks_like_gbnf('start: "a"\n%ignore " "') and not looks_like_gbnf('start: "::="')
    assert compile_ebnf('start: "a"+', BYTES_VOCAB).matches("aaa")
    assert compile_ebnf('root ::= "a"+', BYTES_VOCAB).matches("aaa")


def test_the_ebnf_sampling_kind_takes_gbnf() -> None:
    guide = compile_spec(GrammarSpec("ebnf", 'root ::= ("yes" | "no") "."'), BYTES_VOCAB, GrammarLimits())
    assert guide.matches("yes.") and not guide.matches("maybe.")


@pytest.mark.parametrize(
    "text, message",
    [
        ('root ::= "a" (', "line 1"),
        ('root ::= "a"\nroot ::= "b"', "defined twice"),
        ('start ::= "a"', "no rule 'root'"),
        ("root ::= other", "undefined rule 'other'"),
        ('root ::= "\\q"', "escape \\q"),
        ('root ::= "\\u12"', "malformed"),
        ("root ::= [z-a]", "out of order"),
        ('root ::= "a"{3,1}', "below the lower"),
        ("root ::= []", "empty"),
    ],
)
def test_bad_grammars_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(message)):
        compile_ebnf(text, BYTES_VOCAB)


def test_large_bounded_repetition_compiles_lazily() -> None:
    guide = compile_ebnf('root ::= "<" [a-z]{0,5000} ">"', BYTES_VOCAB)
    assert guide.matches("<" + "q" * 5000 + ">") and not guide.matches("<" + "q" * 5001 + ">")
