"""Prefix sharing by design: fork branches and run_batch programs find their shared prefix in the cache,
computed once (token counts from the engine's own stats and meta info)."""

from __future__ import annotations

import pytest

import loomlm as sgl
from loomlm.lang.backends.local import LocalBackend

SYSTEM = (
    "You are a meticulous assistant. Answer briefly, in plain words, and never invent facts. "
    "When a question is ambiguous, say which reading you answer."
)


@pytest.fixture(scope="module")
def local(engine):
    return LocalBackend(engine)


@sgl.function
def branches(s, n):
    s += SYSTEM + "\nTopic: healthy habits. Write one idea per branch."
    forks = s.fork(n)
    forks += lambda i: f" Idea {i + 1}:"
    forks += sgl.gen("idea", max_tokens=6, stop="\n")
    forks.join()


def test_fork_branches_share_the_prefix(local, engine):
    engine.flush_cache()
    before = engine.get_stats()
    state = branches.run(n=4, backend=local, temperature=0)
    ideas = state["idea"]
    metas = state.get_meta_info("idea")
    prefix_tokens = len(engine.tokenizer(SYSTEM + "\nTopic: healthy habits. Write one idea per branch.")["input_ids"])
    assert len(ideas) == 4
    for meta in metas:
        assert meta["cached_tokens"] >= prefix_tokens
    computed = engine.get_stats()["computed_prefill_tokens"] - before["computed_prefill_tokens"]
    # The prefix once (the fork's prefill), then only each branch's own few tokens.
    assert computed < prefix_tokens + 4 * 8
    engine.idle_integrity()


@sgl.function
def ask(s, question):
    s += sgl.system(SYSTEM)
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=4))


def test_trace_finds_the_constant_prefix(local, engine):
    trace = ask.trace(backend=local)
    template = local.chat_template
    assert trace.prefix == template.prefix("system", first=True) + SYSTEM + template.suffix("system")
    assert trace.stopped_at == "argument 'question'"
    bound = ask.bind(question="Why?").trace(backend=local)
    assert bound.prefix == trace.prefix + template.prefix("user", first=False) + "Why?" + template.suffix(
        "user"
    ) + template.prefix("assistant", first=False)
    assert bound.stopped_at == "gen"


def test_run_batch_prefills_the_traced_prefix_once(local, engine):
    questions = [{"question": f"What is {a} plus {a}?"} for a in range(2, 8)]
    prefix_tokens = len(engine.tokenizer(ask.trace(backend=local).prefix)["input_ids"])
    engine.flush_cache()
    before = engine.get_stats()
    states = ask.run_batch(questions, backend=local, temperature=0, num_threads=6)
    after = engine.get_stats()
    assert all(s.error() is None and isinstance(s["answer"], str) for s in states)
    for state in states:
        assert state.get_meta_info("answer")["cached_tokens"] >= prefix_tokens - 1
    computed = after["computed_prefill_tokens"] - before["computed_prefill_tokens"]
    prompt_tokens = sum(s.get_meta_info("answer")["prompt_tokens"] for s in states)
    assert computed <= prompt_tokens - 5 * (prefix_tokens - 1)  # the prefix computed once, not six times
    engine.idle_integrity()


@sgl.function
def nested(s):
    s += SYSTEM + "\nPlan:"
    plans = s.fork(2)
    for i, plan in enumerate(plans):
        plan += f" plan {i + 1}."
        answers = plan.fork(2)
        answers += lambda j: f" answer {j + 1}:"
        answers += sgl.gen("answer", max_tokens=3)
        answers.join()
    plans.join()


def test_nested_joins_gather_lists_of_lists(local, engine):
    state = nested.run(backend=local, temperature=0)
    answers = state["answer"]
    assert len(answers) == 2 and all(isinstance(a, list) and len(a) == 2 for a in answers)
    engine.idle_integrity()


def test_run_batch_returns_with_every_nested_branch_finished(local, engine):
    states = nested.run_batch([{}, {}], backend=local, temperature=0)

    def unfinished(executor) -> int:
        return executor._queue.unfinished_tasks + sum(unfinished(c) for c in executor.children)

    assert all(unfinished(s.stream_executor) == 0 for s in states)
    assert all(len(s.stream_executor.children) == 2 for s in states)
    engine.idle_integrity()
