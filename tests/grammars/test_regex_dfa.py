"""Regex -> byte DFA: membership agrees with Python's `re.fullmatch`; bad and too-big patterns fail fast."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomlm.grammars.errors import GrammarError, GrammarTimeoutError
from loomlm.grammars.limits import GrammarLimits
from loomlm.grammars.regex_dfa import compile_dfa
from loomlm.grammars.utf8 import utf8_sequences

# \d \w \s are ASCII classes in our dialect: compare with re.ASCII.
CORPUS = [
    r"[a-c]+\d{2}|é.",
    r"(ab|cd)*e?",
    r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?",
    r'"([^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"',
    r"[\u00e0-\u00ff]+x",
    r".{2,3}",
    r"(a|b|)c",
    r"\(\d{3}\) \d{3}-\d{4}",
    r"[a-z0-9._]+@[a-z]+\.(com|org|net)",
    r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}",
    r"[^a-z]{1,4}z",
    r"(x|😀|€)+",
    r"\w+\s\w+",
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    r"(true|false|null)",
    r"a{0}b?",
]
_DFAS = {p: compile_dfa(p) for p in CORPUS}
ALPHABET = 'abcdexyz019.-_ @"\\\n\téàÿü€😀{}()'


def _mutations(text: str) -> st.SearchStrategy[str]:
    i = st.integers(0, len(text))
    ch = st.sampled_from(ALPHABET)
    return st.one_of(
        st.builds(lambda k, c: text[:k] + c + text[k:], i, ch),
        st.builds(lambda k: text[:k] + text[k + 1 :], i),
        st.builds(lambda k, c: text[:k] + c + text[k + 1 :], i, ch),
        st.builds(lambda k: text[:k], i),
    )


@pytest.mark.parametrize("pattern", CORPUS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matches_agrees_with_re_on_generated_and_mutated_strings(pattern: str, data: st.DataObject) -> None:
    dfa = _DFAS[pattern]
    oracle = re.compile(pattern, re.ASCII)
    text = data.draw(st.from_regex(oracle, fullmatch=True).filter(lambda s: "\n" not in s or "." not in pattern))
    assert dfa.matches(text) == bool(oracle.fullmatch(text)), text
    mutated = data.draw(_mutations(text))
    assert dfa.matches(mutated) == bool(oracle.fullmatch(mutated)), mutated
    noise = data.draw(st.text(ALPHABET, max_size=8))
    assert dfa.matches(noise) == bool(oracle.fullmatch(noise)), noise


def test_dfa_is_byte_level_and_minimal() -> None:
    dfa = compile_dfa(r"(ab|ab)*")
    assert dfa.num_states == 2  # minimised: the duplicate branch merges
    dfa = compile_dfa("é")
    assert dfa.num_states == 3  # two bytes: C3 A9
    assert dfa.step(0, b"\xc3") >= 0 and dfa.step(0, b"\xc3\xa8") == -1
    assert not dfa.matches(b"\xc3") and dfa.matches("é")


def test_forced_bytes_are_the_unique_continuation() -> None:
    dfa = compile_dfa(r'\{"name": (true|false)\}')
    assert dfa.forced_bytes(0) == b'{"name": '
    state = dfa.step(0, b'{"name": t')
    assert dfa.forced_bytes(state) == b"rue}"
    assert dfa.forced_bytes(dfa.step(0, b'{"name": true}')) == b""
    assert compile_dfa("ab|ac").forced_bytes(0) == b"a"


def test_utf8_sequences_cover_exactly_the_range() -> None:
    seqs = utf8_sequences([(0x7F, 0x10000)])
    for cp in [0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFF, 0x10000]:
        enc = chr(cp).encode()
        assert any(len(s) == len(enc) and all(a <= b <= z for b, (a, z) in zip(enc, s)) for s in seqs), hex(cp)
    for cp in [0x7E, 0x10001, 0xD800]:  # outside, or a surrogate (no encoding)
        enc = chr(cp).encode("utf-8", "surrogatepass")
        assert not any(len(s) == len(enc) and all(a <= b <= z for b, (a, z) in zip(enc, s)) for s in seqs)


@pytest.mark.parametrize(
    "pattern, words",
    [
        ("[", "invalid regex"),
        ("a(b", "invalid regex"),
        ("^abc", "anchors"),
        ("abc$", "anchors"),
        (r"a\b", "anchors"),
        ("(?=a)b", "lookarounds"),
        (r"(a)\1", "Group references"),
        ("(?i)abc", "inline flags"),
        (r"\p{L}", "invalid regex"),
        ("[^\\x00-\\U0010FFFF]", "empty"),
    ],
)
def test_bad_patterns_raise_grammar_error_naming_the_problem(pattern: str, words: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(words)):
        compile_dfa(pattern)


class FakeClock:
    """A clock that advances `step` seconds each time it is read: the time budget without racing one."""

    def __init__(self, step: float):
        self.now, self.step, self.reads = 0.0, step, 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


def test_blow_up_pattern_fails_on_the_deterministic_budgets() -> None:
    with pytest.raises(GrammarError, match="max_states"):
        compile_dfa(r"[ab]*a[ab]{20}", GrammarLimits(max_states=20_000))
    with pytest.raises(GrammarError, match="max_work"):
        compile_dfa(r"[ab]*a[ab]{20}", GrammarLimits(max_states=10**7, max_work=5_000))
    # The work budget counts the same work on every machine: a compile within it always passes.
    assert compile_dfa(r"[ab]*a[ab]{3}", GrammarLimits(max_work=5_000)).matches("aabab")
    assert isinstance(GrammarError("x"), ValueError)


def test_time_budget_reads_the_injected_clock() -> None:
    # Each read moves 1 s on: start reads t=1 (deadline t=4), checks read t=2, 3, 4, 5 and t=5 fails.
    clock = FakeClock(step=1.0)
    with pytest.raises(GrammarTimeoutError, match="max_seconds"):
        compile_dfa(r"[ab]*a[ab]{20}", GrammarLimits(max_states=10**7, max_seconds=3, clock=clock))
    assert clock.reads == 5  # the same on every machine
    frozen = lambda: 0.0  # time never passes: only the deterministic budgets can fail
    assert compile_dfa(r"[ab]*a[ab]{6}", GrammarLimits(max_seconds=1e-9, clock=frozen)).matches("aaaaaaa")


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_states"):
        GrammarLimits(max_states=0)
    with pytest.raises(ValueError, match="max_seconds"):
        GrammarLimits(max_seconds=-1)
    with pytest.raises(ValueError, match="max_work"):
        GrammarLimits(max_work=0)
    with pytest.raises(ValueError, match="clock"):
        GrammarLimits(clock=3.0)  # type: ignore[arg-type]
