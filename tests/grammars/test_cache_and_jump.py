"""GrammarCache (compile once, off-thread, bounded) and jump-forward plans."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.grammars import (
    GrammarCache,
    GrammarError,
    GrammarLimits,
    GrammarSpec,
    GrammarTimeoutError,
    Vocabulary,
    compile_regex,
    compile_spec,
    plan_jump,
)


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(tokenizer)


def test_cache_compiles_once_and_stays_bounded(vocab: Vocabulary) -> None:
    cache = GrammarCache(vocab, max_entries=2)
    try:
        a = cache.get(GrammarSpec("regex", "a+"))
        assert cache.get(GrammarSpec("regex", "a+")) is a and cache.hits == 1
        assert a.result().matches("aaa")
        cache.compile(GrammarSpec("choices", ("x", "y")))
        cache.compile(GrammarSpec("type", "int"))
        assert len(cache) == 2 and cache.get(GrammarSpec("regex", "a+")) is not a  # evicted LRU
        bad = cache.get(GrammarSpec("regex", "(("))
        with pytest.raises(GrammarError, match="invalid regex"):
            bad.result()
        assert cache.get(GrammarSpec("regex", "((")) is bad  # failures are cached too
    finally:
        cache.shutdown()
    with pytest.raises(ValueError, match="kind"):
        GrammarSpec("gbnf_typo", "x")


def test_cache_respects_limits(vocab: Vocabulary) -> None:
    cache = GrammarCache(vocab, GrammarLimits(max_states=500))
    try:
        with pytest.raises(GrammarError, match="max_states"):
            cache.compile(GrammarSpec("regex", r"[ab]*a[ab]{20}"))
    finally:
        cache.shutdown()


def test_cache_keeps_deterministic_failures_only(vocab: Vocabulary) -> None:
    cache = GrammarCache(vocab, GrammarLimits(max_work=50))
    try:
        bad = cache.get(GrammarSpec("regex", r"[ab]*a[ab]{8}"))
        with pytest.raises(GrammarError, match="max_work"):
            bad.result()
        assert cache.get(GrammarSpec("regex", r"[ab]*a[ab]{8}")) is bad  # the same on every machine: kept
    finally:
        cache.shutdown()
    ticks = itertools.count(step=100)  # a clock 100 s further on at every read: every compile overruns
    cache = GrammarCache(vocab, GrammarLimits(max_seconds=1, clock=lambda: next(ticks)))
    try:
        slow = cache.get(GrammarSpec("regex", "a+"))
        with pytest.raises(GrammarTimeoutError, match="max_seconds"):
            slow.result()
        assert len(cache) == 0 and cache.get(GrammarSpec("regex", "a+")) is not slow  # compiled again
    finally:
        cache.shutdown()


def test_unexpected_compiler_errors_reach_the_waiter_as_grammar_errors(vocab: Vocabulary) -> None:
    def broken(spec, vocab, limits, whitespace):
        raise KeyError("a bug")

    cache = GrammarCache(vocab, compiler=broken)
    try:
        with pytest.raises(GrammarError, match="KeyError") as info:
            cache.compile(GrammarSpec("regex", "a"))
        assert isinstance(info.value.__cause__, KeyError) and len(cache) == 0  # not kept
    finally:
        cache.shutdown()


def test_a_blocked_compile_delays_only_its_own_spec_and_shutdown_fails_it(vocab: Vocabulary) -> None:
    """Deterministic: the slow compile waits on an event (no wall-clock race)."""
    started, release = threading.Event(), threading.Event()
    slow = GrammarSpec("regex", "s+")

    def gated(spec, *args):
        if spec == slow:
            started.set()
            release.wait()
        return compile_spec(spec, *args)

    cache = GrammarCache(vocab, compiler=gated)
    try:
        blocked = cache.get(slow)
        assert started.wait(60)
        assert cache.compile(GrammarSpec("regex", "f+")).matches("ff")  # the other worker serves it
        assert not blocked.done()
        release.set()
        assert blocked.result(60).matches("ss")
        # A compile still pending at shutdown fails cleanly; so does any later request.
        started.clear()
        release.clear()
        slow = GrammarSpec("regex", "t+")
        pending = cache.get(slow)
        assert started.wait(60)
    finally:
        cache.shutdown()
        release.set()
    with pytest.raises(GrammarError, match="shut down"):
        pending.result(60)
    with pytest.raises(GrammarError, match="shut down"):
        cache.compile(GrammarSpec("regex", "u+"))


def _encode(tokenizer):
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def test_jump_retokenizes_the_sampled_token_with_the_forced_text(vocab: Vocabulary, tokenizer) -> None:
    guide = compile_regex(r'\{"name": "[a-z]+", "age": [0-9]+\}', vocab)
    first = tokenizer.convert_tokens_to_ids("{")
    after = guide.advance(guide.initial_state, first)
    plan = plan_jump(guide, guide.initial_state, first, after, _encode(tokenizer), max_tokens=64)
    assert plan is not None and plan.num_replaced == 1
    assert vocab.decode_bytes(plan.tokens) == b'{"name": "'
    assert list(plan.tokens) == tokenizer.encode('{"name": "', add_special_tokens=False)
    assert plan.state == guide.step_bytes(guide.initial_state, b'{"name": "')
    # Nothing forced (a letter or the closing quote may follow): no plan.
    assert plan_jump(guide, after, plan.tokens[-1], plan.state, _encode(tokenizer), 64) is None


def test_jump_respects_the_token_limit(vocab: Vocabulary, tokenizer) -> None:
    guide = compile_regex(r'a(, "some long forced text here")', vocab)
    a = tokenizer.convert_tokens_to_ids("a")
    after = guide.advance(guide.initial_state, a)
    plan = plan_jump(guide, guide.initial_state, a, after, _encode(tokenizer), max_tokens=3)
    assert plan is not None and len(plan.tokens) <= 3
    assert plan.state == guide.step_bytes(guide.initial_state, vocab.decode_bytes(plan.tokens))
    assert plan_jump(guide, guide.initial_state, a, after, _encode(tokenizer), max_tokens=1) is None


WALK_PATTERNS = [
    r'\{"name": "[a-zé ]{0,8}", "tags": \[("(red|green|blue)"(, )?){0,3}\], "ok": (true|false)\}',
    r"(Yes|No), because [a-z ]{1,10}\.",
    r"\(\d{3}\) \d{3}-\d{4}",
]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_walks_with_jumps_stay_in_the_language(vocab: Vocabulary, tokenizer, data: st.DataObject) -> None:
    import numpy as np

    guide = _guide(vocab, data.draw(st.sampled_from(WALK_PATTERNS)))
    eos = sorted(vocab.eos_token_ids)
    ids: list[int] = []
    state = guide.initial_state
    for _ in range(40):
        allowed = np.setdiff1d(np.flatnonzero(guide.allowed_tokens(state)), eos)
        if len(allowed) == 0:
            break
        tok = int(data.draw(st.sampled_from(allowed[:: max(1, len(allowed) // 200)].tolist())))
        prev, state = state, guide.advance(state, tok)
        ids.append(tok)
        plan = plan_jump(guide, prev, tok, state, _encode(tokenizer), 64)
        if plan is not None:
            del ids[len(ids) - plan.num_replaced :]
            ids += plan.tokens
            state = plan.state
            assert guide.forced_bytes(state) == b"" or len(plan.tokens) == 64
        assert state >= 0 and guide.step_bytes(guide.initial_state, vocab.decode_bytes(ids)) == state
    if guide.is_accepting(state):
        assert guide.matches(vocab.decode_bytes(ids))


_GUIDES: dict[str, object] = {}


def _guide(vocab: Vocabulary, pattern: str):
    if pattern not in _GUIDES:
        _GUIDES[pattern] = compile_regex(pattern, vocab)
    return _GUIDES[pattern]
