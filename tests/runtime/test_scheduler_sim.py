"""The scheduler without a model: random workloads on tiny pools, every policy, chunking on and off,
random aborts. A fake forward appends a token that is a function of the request's tokens so far, so
retraction and recompute must reproduce exactly the sequence a huge pool produces; integrity is checked
after every step, and at the end every slot is back (after a flush)."""

from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.batch import ScheduledBatch
from loomlm.runtime.forward_context import ForwardMode
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.request import FinishReason, LogprobOptions, Req, ReqStatus
from loomlm.runtime.sampling_params import SamplingParams
from loomlm.runtime.scheduler import Scheduler
from loomlm.runtime.stats import EngineStats

VOCAB = 5   # a tiny alphabet, so that prompts and outputs share prefixes and the cache is busy


def next_token(tokens: list[int]) -> int:
    return (sum(tokens[-3:]) * 7 + len(tokens)) % VOCAB


def make_scheduler(slots: int, rows: int, policy: str, cache: bool, chunk: int | None) -> Scheduler:
    pool = KVPool(slots, num_layers=1, num_kv_heads=1, head_dim=1, dtype=torch.float32, device="cpu")
    return Scheduler(pool, ReqToTokenPool(rows, 256, "cpu"), prefill_budget=chunk or 10_000,
                     chunked_prefill=chunk is not None, policy=policy, enable_cache=cache, stats=EngineStats())


def fake_step(sched: Scheduler, batch: ScheduledBatch) -> None:
    """What EngineCore.step does with a batch, with next_token() standing in for the model."""
    sched.after_forward(batch)
    if batch.mode == ForwardMode.EXTEND:
        sched.cache_prefill(batch)
    for req in batch.sampling_reqs:
        if req.status != ReqStatus.RUNNING:
            continue
        req.output_ids.append(next_token(req.prompt_ids + req.output_ids))
        if len(req.output_ids) >= req.max_new_tokens:
            sched.finish(req, FinishReason("length"))


def run(sched: Scheduler, reqs: list[Req], aborts: dict[int, int]) -> int:
    """Runs to completion; `aborts` maps a step number to the index of the request aborted then."""
    for req in reqs:
        sched.add(req)
    steps = 0
    while True:
        if steps in aborts:
            victim = reqs[aborts[steps]]
            if victim.status != ReqStatus.FINISHED:
                sched.finish(victim, FinishReason("abort"))
        if not sched.has_work():
            break
        batch = sched.schedule()
        assert batch is not None, "work left that cannot be scheduled"
        if batch.mode == ForwardMode.DECODE:
            assert len(batch.reqs) > 0
        fake_step(sched, batch)
        sched.check_integrity()
        steps += 1
        assert steps < 5000, "no progress"
    return steps


def make_reqs(rng: random.Random, n: int) -> list[Req]:
    reqs = []
    for i in range(n):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 40))]
        req = Req(rid=f"r{i}", prompt_ids=prompt, params=SamplingParams(), seed=0, logprobs=LogprobOptions(),
                  sink=lambda out: None, max_new_tokens=rng.randrange(1, 25))
        req.scored_upto = len(prompt)
        reqs.append(req)
    return reqs


def expected_output(req: Req) -> list[int]:
    tokens = list(req.prompt_ids)
    for _ in range(req.max_new_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(req.prompt_ids):]


@given(seed=st.integers(0, 10_000), policy=st.sampled_from(["fcfs", "lpm", "dfs-weight"]),
       cache=st.booleans(), chunk=st.sampled_from([None, 8, 17]), slots=st.integers(62, 200),
       rows=st.integers(1, 6), n=st.integers(1, 14), num_aborts=st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_random_workloads_complete_identically_and_leak_nothing(seed, policy, cache, chunk, slots, rows, n,
                                                                num_aborts):
    rng = random.Random(seed)
    reqs = make_reqs(rng, n)
    aborts = {rng.randrange(0, 60): rng.randrange(n) for _ in range(num_aborts)}
    sched = make_scheduler(slots, rows, policy, cache, chunk)
    run(sched, reqs, aborts)
    for req in reqs:
        assert req.status == ReqStatus.FINISHED
        if req.finish_reason.type == "abort":
            assert req.output_ids == expected_output(req)[:len(req.output_ids)]
        else:
            assert req.output_ids == expected_output(req), req.rid
    mem = sched.memory_snapshot()
    assert mem["kv_pool_used"] == mem["cache_size"] and mem["cache_protected"] == 0
    assert sched.flush_cache() and sched.kv_pool.used() == 0


def test_tiny_pool_forces_retraction_and_eviction():
    rng = random.Random(7)
    reqs = make_reqs(rng, 12)
    for req in reqs:
        req.max_new_tokens = 24
    sched = make_scheduler(90, 8, "lpm", True, 16)
    run(sched, reqs, {})
    assert sched.stats.retracted_requests > 0 and sched.cache.tree.evicted_tokens > 0
    assert all(r.output_ids == expected_output(r) for r in reqs)


def test_low_priority_requests_are_retracted_first():
    rng = random.Random(3)
    reqs = make_reqs(rng, 10)
    for i, req in enumerate(reqs):
        req.max_new_tokens = 24
        req.priority = 1 if i % 2 else 0
    sched = make_scheduler(100, 10, "fcfs", True, None)
    victims: list[tuple[int, int]] = []   # (victim's priority, lowest priority among the holders then)
    retract = sched.retract

    def logged(req):
        victims.append((req.priority, min(r.priority for r in sched.holders())))
        retract(req)

    sched.retract = logged
    run(sched, reqs, {})
    assert victims and all(victim == lowest for victim, lowest in victims)
    assert any(victim == 0 for victim, _ in victims)
    assert all(r.output_ids == expected_output(r) for r in reqs)
