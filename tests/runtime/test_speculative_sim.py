"""Speculative decoding (n-gram drafts, verify passes) in the real engine loop without a model.

The model-free runner of test_scheduler_sim puts all the mass of a position on a function of the tokens
read back through the request's slots, so a verify pass gives right tokens only if every draft slot
mapping is right, and the output of a request must equal the one plain decoding gives. Integrity (slots,
rows, sampler rows) is checked after every step, and at the end every slot is back."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.config import EngineConfig
from loomlm.runtime.engine_core import EngineCore
from loomlm.runtime.request import ReqStatus
from loomlm.runtime.speculative import NgramDrafter, NgramIndex
from tests.runtime.test_scheduler_sim import (
    VOCAB,
    FakeRunner,
    StubTokenizer,
    check_all_back,
    check_delivered,
    make_reqs,
    next_token,
    run,
)

PERIOD = 5


def periodic_next(tokens: list[int]) -> int:
    """A model that continues its context with period 5: n-gram drafts are right once a period is seen."""
    return tokens[-PERIOD] if len(tokens) >= PERIOD else next_token(tokens)


def make_spec_core(
    slots: int, rows: int, draft_tokens: int, *, cache: bool = True, chunk: int | None = None, next_fn=next_token
) -> EngineCore:
    config = EngineConfig(
        max_running_requests=rows,
        max_prefill_tokens=chunk or 10_000,
        chunked_prefill_size=chunk or -1,
        disable_radix_cache=not cache,
        speculative_algorithm="NGRAM",
        speculative_num_draft_tokens=draft_tokens,
        speculative_ngram_min_match_window_size=1,
        speculative_ngram_max_match_window_size=3,
    )
    return EngineCore(FakeRunner(slots, rows, next_fn), StubTokenizer(), config, start_loop=False)


def expected(req, next_fn) -> list[int]:
    """Plain decoding's output: up to max_new_tokens, or up to and including a stop token."""
    tokens = list(req.prompt_ids)
    for _ in range(req.max_new_tokens):
        tokens.append(next_fn(tokens))
        if tokens[-1] in req.stop_token_ids:
            break
    return tokens[len(req.prompt_ids) :]


@given(
    seed=st.integers(0, 10_000),
    cache=st.booleans(),
    chunk=st.sampled_from([None, 8]),
    slots=st.integers(62, 200),
    rows=st.integers(1, 6),
    n=st.integers(1, 12),
    num_aborts=st.integers(0, 3),
    draft_tokens=st.sampled_from([1, 2, 4, 7]),
    periodic=st.booleans(),
    stops=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_speculative_workloads_complete_identically_and_leak_nothing(
    seed, cache, chunk, slots, rows, n, num_aborts, draft_tokens, periodic, stops
):
    """Random prompts, sampling parameters (penalties included: not drafted), stop tokens met inside a
    run of accepted drafts, aborts, small pools that retract and evict: every request's output is the
    plain-decoding one and nothing leaks."""
    rng = random.Random(seed)
    reqs, outputs = make_reqs(rng, n)
    if stops:
        for req in reqs:
            req.stop_token_ids = frozenset({rng.randrange(VOCAB)})
    next_fn = periodic_next if periodic else next_token
    aborts = {rng.randrange(0, 40): rng.randrange(n) for _ in range(num_aborts)}
    core = make_spec_core(slots, rows, draft_tokens, cache=cache, chunk=chunk, next_fn=next_fn)
    run(core, reqs, aborts)
    for req, outs in zip(reqs, outputs):
        assert req.status == ReqStatus.FINISHED
        want = expected(req, next_fn)
        if req.finish_reason.type == "abort":
            assert req.finish_reason.message == "aborted by the caller"
            assert req.output_ids == want[: len(req.output_ids)]
        else:
            assert req.finish_reason.type == ("stop" if want[-1:] and want[-1] in req.stop_token_ids else "length")
            assert req.output_ids == want, req.rid
        check_delivered(req, outs)
    check_all_back(core)


def test_copying_model_accepts_most_drafts():
    """With a context the model repeats, a verify pass yields several tokens: fewer passes, same output."""
    rng = random.Random(5)
    reqs, _ = make_reqs(rng, 4)
    for req in reqs:
        req.prompt_ids = [rng.randrange(VOCAB) for _ in range(12)]
        req.max_new_tokens = 40
        req.params = make_reqs(random.Random(0), 1)[0][0].params.__class__(temperature=0)
    core = make_spec_core(400, 4, 4, next_fn=periodic_next)
    run(core, reqs, {})
    assert all(r.output_ids == expected(r, periodic_next) for r in reqs)
    stats = core.stats
    assert stats.spec_verify_passes > 0
    # 4 requests x 40 tokens: 160 tokens; plain decoding needs 39 decode passes after the prefill.
    assert stats.spec_accept_length >= 4.0
    assert stats.spec_verify_passes + stats.decode_passes <= 14
    check_all_back(core)


@given(
    seed=st.integers(0, 10_000),
    slots=st.integers(62, 150),
    rows=st.integers(1, 4),
    n=st.integers(1, 8),
    forward_faults=st.sets(st.integers(0, 30), max_size=3),
)
@settings(max_examples=60, deadline=None)
def test_failed_verify_passes_free_their_drafts(seed, slots, rows, n, forward_faults):
    rng = random.Random(seed)
    reqs, outputs = make_reqs(rng, n)
    core = make_spec_core(slots, rows, 4, next_fn=periodic_next)
    core.runner.failing = forward_faults
    run(core, reqs, {})
    for req, outs in zip(reqs, outputs):
        want = expected(req, periodic_next)
        if req.finish_reason.type == "abort":
            assert "injected" in req.finish_reason.message
            assert req.output_ids == want[: len(req.output_ids)]
        else:
            assert req.output_ids == want, req.rid
        check_delivered(req, outs)
    check_all_back(core)


def test_ngram_index_drafts_what_followed_the_latest_occurrence():
    index = NgramIndex(1, 3)
    seq = [1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3]
    index.update(seq)
    assert index.lookup(seq, 4) == [7, 1, 2, 3]  # the latest [1, 2, 3] is followed by 7
    assert index.lookup(seq + [5], 4) == []  # 5 never occurred before
    seq += [7, 1]
    index.update(seq)
    assert index.lookup(seq, 2) == [2, 3]  # [3, 7, 1] at 6..8
    assert index.lookup([4, 4, 4], 3) == []  # not indexed
    run_of_one = [6] * 5
    fresh = NgramIndex(2, 2)
    fresh.update(run_of_one)
    assert fresh.lookup(run_of_one, 4) == [6]  # the continuation stops at the end of what is known


def test_draft_length_adapts_and_pauses():
    drafter = NgramDrafter(num_draft_tokens=6, min_window=1, max_window=2, context_length=100)
    (req,), _ = make_reqs(random.Random(1), 1)
    req.prompt_ids, req.max_new_tokens = [1, 2, 3, 1, 2, 3, 1, 2], 50
    req.params = req.params.__class__(temperature=0)
    draft = drafter.propose([req])[0]
    assert list(draft.tokens) == [3, 1, 2]  # all that followed the latest [1, 2]
    st_ = req.draft_state
    drafter.observe(req, 3, 1)
    assert st_.length == 5 and st_.pause == 0
    for misses, pause in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 16)]:
        drafter.observe(req, 2, 0)
        assert st_.misses == misses and st_.pause == pause
    assert st_.length == 1
    assert len(drafter.propose([req])[0]) == 0 and st_.pause == 15  # paused steps draft nothing
    st_.pause = 0
    drafter.observe(req, 1, 1)
    assert st_.length == 3 and st_.misses == 0


@pytest.mark.parametrize("remaining,context_room,limit", [(1, 50, 0), (3, 50, 2), (50, 2, 1)])
def test_drafts_leave_room_for_the_bonus_token(remaining, context_room, limit):
    (req,), _ = make_reqs(random.Random(1), 1)
    req.prompt_ids = [1, 2] * 10
    req.max_new_tokens = remaining
    req.params = req.params.__class__(temperature=0)
    drafter = NgramDrafter(num_draft_tokens=8, min_window=1, max_window=2, context_length=20 + context_room)
    assert len(drafter.propose([req])[0]) == limit


@given(seed=st.integers(0, 10_000), fault_at=st.integers(0, 120))
@settings(max_examples=60, deadline=None)
def test_a_step_failing_inside_a_verify_pass_leaks_no_draft(seed, fault_at):
    """An exception while a verify pass's tokens are taken (the n-th token) aborts the batch's requests;
    the drafts some of them took and the ones nobody took are all accounted for."""
    rng = random.Random(seed)
    reqs, _ = make_reqs(rng, 4)
    core = make_spec_core(200, 4, 4, next_fn=periodic_next)
    advance, calls = core.output._advance, [0]

    def faulty_advance(req, token):
        calls[0] += 1
        if calls[0] == fault_at:
            raise RuntimeError("injected output fault")
        advance(req, token)

    core.output._advance = faulty_advance
    run(core, reqs, {})
    for req in reqs:
        want = expected(req, periodic_next)
        assert req.output_ids == want[: len(req.output_ids)]
        if req.finish_reason.type != "abort":
            assert req.output_ids == want, req.rid
        else:
            assert "injected" in req.finish_reason.message
    check_all_back(core)
