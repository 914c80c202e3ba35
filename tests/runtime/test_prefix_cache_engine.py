"""Prefix cache, cache-aware scheduling, chunked prefill and retraction, end to end on the real model.

The tests check two things: outputs do not change when a feature is on (greedy, or seeded sampling,
compared with a run that cannot use the feature), and the work counters show the feature did its job
(`get_stats()` token counts and `meta_info["cached_tokens"]`, never timings). Prompts are lists of token
ids so their lengths are exact; counters are cumulative per engine, so tests take differences.

`paused(engine)` holds the scheduler loop between two steps (inside `engine.core.call`), so its state can
be read exactly from the test thread; an `engine.abort` sent while paused is handled right after, before
the next step.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time

import pytest

import loomlm

BIG = {"max_total_tokens": 20000, "max_running_requests": 32, "random_seed": 0}
STAT_KEYS = (
    "computed_prefill_tokens",
    "cached_prefill_tokens",
    "extend_passes",
    "retracted_requests",
    "evicted_tokens",
    "requests_finished",
)


def rand_ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40000) for _ in range(n)]


def greedy(n: int) -> dict:
    return {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}


def delta(engine, before: dict) -> dict:
    after = engine.get_stats()
    return {k: after[k] - before[k] for k in STAT_KEYS}


def shared_prefix_workload(
    seed: int = 0, groups: int = 3, per_group: int = 4, prefix_len: int = 200, suffix_len: int = 20
) -> list[list[int]]:
    """groups x per_group prompts: a group prefix + a distinct suffix, shuffled."""
    prompts = [
        rand_ids(seed * 1000 + g, prefix_len) + rand_ids(seed * 1000 + 100 + g * per_group + i, suffix_len)
        for g in range(groups)
        for i in range(per_group)
    ]
    random.Random(seed).shuffle(prompts)
    return prompts


def scheduler_call(engine, fn):
    return engine.core.call(lambda: fn(engine.core.scheduler))


def wait_until(engine, predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not scheduler_call(engine, predicate):
        assert time.monotonic() < deadline, "timed out waiting for the scheduler"
        time.sleep(0.005)


@contextlib.contextmanager
def paused(engine):
    """Block the loop thread between steps; yields the scheduler, safe to read while paused."""
    entered, release = threading.Event(), threading.Event()

    def hold():
        entered.set()
        release.wait(300)

    holder = threading.Thread(target=engine.core.call, args=(hold,), daemon=True)
    holder.start()
    assert entered.wait(120), "the scheduler loop did not pause"
    try:
        yield engine.core.scheduler
    finally:
        release.set()
        holder.join(120)


def in_thread(fn, *args, **kwargs):
    box: dict = {}

    def run():
        try:
            box["out"] = fn(*args, **kwargs)
        except Exception as exc:
            box["err"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout: float = 120.0):
        t.join(timeout)
        assert not t.is_alive(), "request did not finish"
        if "err" in box:
            raise box["err"]
        return box["out"]

    return join


def logprob_values(entries: list) -> list:
    return [e[0] for e in entries]


def assert_close(a: list, b: list, tol: float) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        if x is None or y is None:
            assert x is None and y is None, i
        else:
            assert abs(x - y) <= tol, (i, x, y)


@pytest.fixture(scope="module")
def cache_engine():
    """Default scheduling (lpm, radix cache on), a big pool."""
    with loomlm.Engine(**BIG) as eng:
        yield eng


@pytest.fixture(scope="module")
def nocache_engine():
    with loomlm.Engine(disable_radix_cache=True, **BIG) as eng:
        yield eng


@pytest.fixture(scope="module")
def chunk_engine():
    with loomlm.Engine(
        max_total_tokens=8000,
        max_running_requests=4,
        random_seed=0,
        context_length=4096,
        max_prefill_tokens=4096,
        chunked_prefill_size=512,
    ) as eng:
        yield eng


# ---- 1. shared prefixes ----------------------------------------------------------------------------
def test_shared_prefix_reuse_matches_no_cache(cache_engine, nocache_engine):
    prompts = shared_prefix_workload(seed=1)
    total = sum(map(len, prompts))
    n = len(prompts)

    before = nocache_engine.get_stats()
    ref = nocache_engine.generate(input_ids=prompts, sampling_params=greedy(8))
    d = delta(nocache_engine, before)
    assert d["cached_prefill_tokens"] == 0
    assert d["computed_prefill_tokens"] == total
    assert all(o["meta_info"]["cached_tokens"] == 0 for o in ref)
    assert nocache_engine.get_stats()["cache_size"] == 0
    nocache_engine.idle_integrity()
    assert nocache_engine.runner.kv_pool.used() == 0

    assert cache_engine.flush_cache()
    before = cache_engine.get_stats()
    outs = cache_engine.generate(input_ids=prompts, sampling_params=greedy(8))
    d = delta(cache_engine, before)
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in ref]
    assert all(o["meta_info"]["completion_tokens"] == 8 for o in outs)
    assert d["cached_prefill_tokens"] > 0
    assert d["computed_prefill_tokens"] + d["cached_prefill_tokens"] == total
    assert sum(o["meta_info"]["cached_tokens"] for o in outs) == d["cached_prefill_tokens"]
    # lpm defers a request sharing uncached tokens with one admitted in the same step, so every group
    # prefix is computed exactly once: the best possible reuse.
    assert d["cached_prefill_tokens"] == 3 * 3 * 200
    cache_engine.idle_integrity()

    # The same call again: every prompt is cached except its last token (its logits give the next token).
    before = cache_engine.get_stats()
    again = cache_engine.generate(input_ids=prompts, sampling_params=greedy(8))
    d = delta(cache_engine, before)
    assert [o["output_ids"] for o in again] == [o["output_ids"] for o in ref]
    assert d["cached_prefill_tokens"] >= total - n
    assert d["cached_prefill_tokens"] == total - n and d["computed_prefill_tokens"] == n
    assert all(o["meta_info"]["cached_tokens"] == len(p) - 1 for o, p in zip(again, prompts))
    cache_engine.idle_integrity()


# ---- 2. chunked prefill ----------------------------------------------------------------------------
def test_chunked_prefill_matches_unchunked(chunk_engine):
    prompt = rand_ids(2, 1300)  # 3 chunks: 512 + 512 + 276
    kwargs = {"input_ids": prompt, "sampling_params": greedy(16), "return_logprob": True, "logprob_start_len": 0}

    assert chunk_engine.flush_cache()
    before = chunk_engine.get_stats()
    chunked = chunk_engine.generate(**kwargs)
    d_chunked = delta(chunk_engine, before)
    chunk_engine.idle_integrity()

    with loomlm.Engine(
        max_total_tokens=8000,
        max_running_requests=4,
        random_seed=0,
        context_length=4096,
        max_prefill_tokens=4096,
        chunked_prefill_size=-1,
    ) as whole_engine:
        before = whole_engine.get_stats()
        whole = whole_engine.generate(**kwargs)
        d_whole = delta(whole_engine, before)
        whole_engine.idle_integrity()

    assert len(whole["output_ids"]) == 16
    assert chunked["output_ids"] == whole["output_ids"]
    assert d_chunked["extend_passes"] == math.ceil(1300 / 512)
    assert d_whole["extend_passes"] == 1
    for d in (d_chunked, d_whole):
        assert d["computed_prefill_tokens"] == 1300 and d["cached_prefill_tokens"] == 0

    lp_chunked = chunked["meta_info"]["input_token_logprobs"]
    lp_whole = whole["meta_info"]["input_token_logprobs"]
    assert len(lp_chunked) == len(lp_whole) == 1300
    assert [e[1] for e in lp_chunked] == prompt and [e[1] for e in lp_whole] == prompt
    assert lp_chunked[0][0] is None
    assert_close(logprob_values(lp_chunked), logprob_values(lp_whole), 1e-3)
    assert_close(
        logprob_values(chunked["meta_info"]["output_token_logprobs"]),
        logprob_values(whole["meta_info"]["output_token_logprobs"]),
        1e-3,
    )


def test_chunked_prefill_interleaves_with_decode(chunk_engine):
    """While a long prompt is prefilled chunk by chunk, the running request keeps decoding: outputs are
    logged in the loop thread's order, so the count is exact."""
    from loomlm.runtime.request import LogprobOptions, RequestOptions

    events: list[tuple[str, int, bool]] = []
    prepared, _ = chunk_engine._prepare(
        None, [greedy(40), greedy(1)], [rand_ids(3, 20), rand_ids(4, 3000)], LogprobOptions()
    )

    def sink(i: int):
        return lambda out: events.append(("ab"[i], len(out.new_token_ids), out.finished))

    reqs = chunk_engine._expand(prepared, LogprobOptions(), sink, RequestOptions(), {})
    before = chunk_engine.get_stats()
    for req in reqs:
        chunk_engine.core.submit(req)
    wait_until(chunk_engine, lambda sched: not sched.has_work())
    d = delta(chunk_engine, before)
    long_done = next(i for i, e in enumerate(events) if e[0] == "b" and e[2])
    short_tokens_by_then = sum(e[1] for e in events[:long_done] if e[0] == "a")
    # 6 chunks of <= 512 tokens; a decode step of the short request between every two of them.
    assert d["extend_passes"] >= 6 and short_tokens_by_then >= 5
    assert sum(e[1] for e in events if e[0] == "a") == 40
    chunk_engine.idle_integrity()


def test_abort_during_chunked_prefill_keeps_computed_chunks(chunk_engine):
    """An aborted chunked prompt owns no slots outside the tree (each chunk is cached when computed);
    the chunks computed before the abort are hits for the next request with that prompt."""
    prompt = rand_ids(3, 3000)
    assert chunk_engine.flush_cache()
    join = in_thread(chunk_engine.generate, input_ids=prompt, sampling_params=greedy(4), rid="chunky")
    wait_until(chunk_engine, lambda s: s.chunked is not None and s.chunked.kv_len >= 1024)
    with paused(chunk_engine) as sched:
        req = sched.chunked
        assert req.rid == "chunky" and req.status.value == "running"
        computed = req.kv_len
        assert computed % 512 == 0 and 1024 <= computed < 3000
        assert req.cache_len == computed  # the computed chunks are already in the tree
        available = chunk_engine.runner.kv_pool.available()
        cache_size = sched.cache.tree.total_size()
        assert cache_size == computed
        chunk_engine.abort("chunky")
    out = join()
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert out["output_ids"] == [] and out["meta_info"]["completion_tokens"] == 0
    stats = chunk_engine.get_stats()
    assert scheduler_call(chunk_engine, lambda s: s.kv_pool.available()) == available
    assert stats["cache_size"] == cache_size == stats["kv_pool_used"]
    chunk_engine.idle_integrity()

    again = chunk_engine.generate(input_ids=prompt, sampling_params=greedy(4))
    assert again["meta_info"]["cached_tokens"] == computed
    chunk_engine.idle_integrity()


# ---- 3. memory pressure ----------------------------------------------------------------------------
def run_pressure(tiny_config: dict, big_engine, prompts: list[list[int]], new_tokens: int) -> None:
    """Greedy, then seeded sampling, each on a fresh engine whose pool is too small for the workload: each
    retracts requests and evicts cached tokens, and gives exactly the outputs of a pool big enough for
    everything at once (the sampler is seeded per request and position, so a retracted request resumes
    identically). A fresh engine each time: a retraction makes admission more careful afterwards."""
    params_greedy = greedy(new_tokens)
    params_sampled = [
        {"max_new_tokens": new_tokens, "temperature": 0.8, "seed": 1000 + i, "ignore_eos": True}
        for i in range(len(prompts))
    ]
    assert big_engine.flush_cache()
    before = big_engine.get_stats()
    refs = [big_engine.generate(input_ids=prompts, sampling_params=p) for p in (params_greedy, params_sampled)]
    assert delta(big_engine, before)["retracted_requests"] == 0
    assert [o["output_ids"] for o in refs[0]] != [o["output_ids"] for o in refs[1]]

    for params, ref in zip((params_greedy, params_sampled), refs):
        with loomlm.Engine(**tiny_config) as tiny_engine:
            before = tiny_engine.get_stats()
            outs = tiny_engine.generate(input_ids=prompts, sampling_params=params)
            d = delta(tiny_engine, before)
            assert all(o["meta_info"]["completion_tokens"] == new_tokens for o in outs)
            assert all(o["meta_info"]["finish_reason"]["type"] == "length" for o in outs)
            assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in ref]
            assert d["retracted_requests"] > 0
            assert d["evicted_tokens"] > 0
            assert d["requests_finished"] == len(prompts)
            # A resumed request recomputes (or hits) its tokens again: extra prefill work, no lost tokens.
            assert d["computed_prefill_tokens"] + d["cached_prefill_tokens"] > sum(map(len, prompts))
            tiny_engine.check_integrity()
            tiny_engine.idle_integrity()

            stats = tiny_engine.get_stats()
            assert stats["kv_pool_used"] == stats["cache_size"] > 0 and stats["cache_protected"] == 0
            assert tiny_engine.flush_cache() is True
            assert tiny_engine.runner.kv_pool.used() == 0
            assert tiny_engine.get_stats()["cache_size"] == 0
            tiny_engine.idle_integrity()


def test_memory_pressure_retracts_and_resumes_small(cache_engine):
    # Admission reserves 70% of each request's new tokens, so the 8 or so admitted at once outgrow the
    # pool by ~10 tokens each: 20 + 10 x (12 + 32) = 460 tokens wanted, 300 slots.
    prefix = rand_ids(30, 20)
    prompts = [prefix + rand_ids(300 + i, 12) for i in range(10)]
    run_pressure(
        {"max_total_tokens": 300, "max_running_requests": 32, "random_seed": 0}, cache_engine, prompts, new_tokens=32
    )


@pytest.mark.slow
def test_memory_pressure_retracts_and_resumes(cache_engine):
    prefix = rand_ids(31, 100)
    prompts = [prefix + rand_ids(400 + i, 100) for i in range(32)]
    run_pressure(
        {"max_total_tokens": 1500, "max_running_requests": 32, "random_seed": 0}, cache_engine, prompts, new_tokens=100
    )


# ---- 4. abort --------------------------------------------------------------------------------------
def test_abort_waiting_and_running_frees_exactly_their_slots():
    shared = rand_ids(40, 100)
    prompt_a = shared + rand_ids(41, 100)
    prompt_c = shared + rand_ids(42, 100)
    prompt_b = rand_ids(43, 150)
    prompt_d = rand_ids(44, 150)
    with loomlm.Engine(max_total_tokens=1200, max_running_requests=2, random_seed=0) as eng:
        pool = eng.runner.kv_pool
        before = eng.get_stats()
        stream_a = eng.generate(input_ids=prompt_a, sampling_params=greedy(60), stream=True, rid="A")
        first_a = [next(stream_a), next(stream_a)]
        stream_c = eng.generate(input_ids=prompt_c, sampling_params=greedy(300), stream=True, rid="C")
        first_c = [next(stream_c), next(stream_c)]
        assert not any(c["finished"] for c in first_a + first_c)
        assert first_c[-1]["meta_info"]["cached_tokens"] == 100  # A's prompt was already cached
        # Both rows are taken: B and D queue.
        join_b = in_thread(eng.generate, input_ids=prompt_b, sampling_params=greedy(20), rid="B")
        wait_until(eng, lambda s: [r.rid for r in s.waiting] == ["B"])
        join_d = in_thread(eng.generate, input_ids=prompt_d, sampling_params=greedy(20), rid="D")
        wait_until(eng, lambda s: [r.rid for r in s.waiting] == ["B", "D"])

        with paused(eng) as sched:
            b = sched.find("B")
            assert b.status.value == "waiting" and b.row == -1 and b.kv_len == 0
            assert sorted(r.rid for r in sched.holders()) == ["A", "C"]
            eng.abort("B")
        out_b = join_b()
        assert out_b["meta_info"]["finish_reason"]["type"] == "abort"
        assert out_b["output_ids"] == [] and out_b["meta_info"]["cached_tokens"] == 0
        eng.check_integrity()

        rest_a = list(stream_a)
        assert rest_a[-1]["finished"] and rest_a[-1]["meta_info"]["finish_reason"]["type"] == "length"
        assert sum(len(c["output_ids"]) for c in first_a + rest_a) == 60
        out_d = join_d()
        assert out_d["meta_info"]["completion_tokens"] == 20

        with paused(eng) as sched:
            assert [r.rid for r in sched.holders()] == ["C"] and not sched.waiting
            c = sched.holders()[0]
            assert 0 < len(c.output_ids) < 300
            assert c.cache_len == len(prompt_c)  # its prompt went into the tree after its prefill
            own = c.kv_len - c.cache_len  # its decoded tokens: slots only C owns
            assert own == len(c.output_ids) - 1
            available = pool.available()
            cache_size = sched.cache.tree.total_size()
            eng.abort("C")
        # Nothing else is queued or running, so no step ran after the abort (handled before this call).
        assert scheduler_call(eng, lambda s: s.kv_pool.available()) == available + own
        stats = eng.get_stats()
        assert stats["cache_size"] == cache_size
        rest_c = list(stream_c)
        assert rest_c[-1]["finished"] and rest_c[-1]["meta_info"]["finish_reason"]["type"] == "abort"
        assert sum(len(x["output_ids"]) for x in first_c + rest_c) < 300

        eng.idle_integrity()
        stats = eng.get_stats()
        assert pool.used() == stats["cache_size"]
        # The tree holds what finished requests inserted (A and D: prompt + output but the last token)
        # and C's prompt (cached at prefill), sharing A's 100-token prefix; nothing of B, nothing C decoded.
        expected = (len(prompt_a) + 60 - 1) + (len(prompt_d) + 20 - 1) + (len(prompt_c) - 100)
        assert stats["cache_size"] == expected
        d = delta(eng, before)
        assert d["evicted_tokens"] == 0 and d["retracted_requests"] == 0
        assert d["requests_finished"] == 4


def test_abort_running_and_queued_under_pressure():
    """Many long requests on a small pool: aborting a running and a queued one (by rid) loses no slot,
    and everything else completes."""
    prefix = rand_ids(50, 60)
    prompts = [prefix + rand_ids(500 + i, 60) for i in range(8)]
    with loomlm.Engine(max_total_tokens=500, max_running_requests=8, random_seed=0) as eng:
        joins = {
            f"r{i}": in_thread(eng.generate, input_ids=p, sampling_params=greedy(40), rid=f"r{i}")
            for i, p in enumerate(prompts)
        }
        victims: dict[str, int] = {}

        def abort_when_ready(s) -> bool:
            # Runs on the loop thread: the aborts are handled right after it, before the next step.
            if len(s.running) < 2 or min(len(r.output_ids) for r in s.running) < 2 or not s.waiting:
                return False
            for req in (s.running[-1], s.waiting[-1]):
                victims[req.rid] = len(req.output_ids)
                eng.abort(req.rid)
            return True

        wait_until(eng, abort_when_ready)
        outs = {rid: join() for rid, join in joins.items()}
        assert len(victims) == 2
        for rid, out in outs.items():
            if rid in victims:
                assert out["meta_info"]["finish_reason"]["type"] == "abort"
                assert out["meta_info"]["completion_tokens"] == victims[rid]
            else:
                assert out["meta_info"]["completion_tokens"] == 40
        eng.idle_integrity()
        stats = eng.get_stats()
        assert eng.runner.kv_pool.used() == stats["cache_size"]
        assert eng.flush_cache() and eng.runner.kv_pool.used() == 0


# ---- 5. cache_salt ---------------------------------------------------------------------------------
def test_cache_salt_isolates_prefixes(cache_engine):
    prompt = rand_ids(5, 64)
    assert cache_engine.flush_cache()
    first = cache_engine.generate(input_ids=prompt, sampling_params=greedy(4), cache_salt="tenant-a")
    assert first["meta_info"]["cached_tokens"] == 0
    other = cache_engine.generate(input_ids=prompt, sampling_params=greedy(4), cache_salt="tenant-b")
    assert other["meta_info"]["cached_tokens"] == 0
    unsalted = cache_engine.generate(input_ids=prompt, sampling_params=greedy(4))
    assert unsalted["meta_info"]["cached_tokens"] == 0
    same = cache_engine.generate(input_ids=prompt, sampling_params=greedy(4), cache_salt="tenant-a")
    assert same["meta_info"]["cached_tokens"] == len(prompt) - 1
    assert first["output_ids"] == other["output_ids"] == unsalted["output_ids"] == same["output_ids"]
    cache_engine.idle_integrity()


# ---- 6. schedule policies --------------------------------------------------------------------------
def test_policies_same_outputs_cache_aware_reuse_more(cache_engine):
    prompts = shared_prefix_workload(seed=6)
    total = sum(map(len, prompts))
    results = {}
    cached = {}
    for policy in ("fcfs", "dfs-weight", "lpm"):
        if policy == "lpm":
            assert cache_engine.flush_cache()
            eng_ctx = contextlib.nullcontext(cache_engine)
        else:
            eng_ctx = loomlm.Engine(schedule_policy=policy, **BIG)
        with eng_ctx as eng:
            before = eng.get_stats()
            results[policy] = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=greedy(8))]
            d = delta(eng, before)
            assert d["computed_prefill_tokens"] + d["cached_prefill_tokens"] == total
            cached[policy] = d["cached_prefill_tokens"]
            eng.idle_integrity()
    assert results["fcfs"] == results["lpm"] == results["dfs-weight"]
    assert cached["lpm"] >= cached["fcfs"] and cached["dfs-weight"] >= cached["fcfs"]
    assert cached["lpm"] == cached["dfs-weight"] == 3 * 3 * 200  # each group prefix computed once


# ---- 7. flush_cache --------------------------------------------------------------------------------
def test_flush_cache_refused_while_running(cache_engine):
    assert cache_engine.flush_cache()
    prompt = rand_ids(7, 80)
    stream = cache_engine.generate(input_ids=prompt, sampling_params=greedy(30), stream=True)
    first = next(stream)
    assert not first["finished"]
    size = cache_engine.get_stats()["cache_size"]
    assert size == len(prompt)
    assert cache_engine.flush_cache() is False
    assert cache_engine.get_stats()["cache_size"] == size  # nothing dropped
    rest = list(stream)
    assert rest[-1]["finished"] and len(first["output_ids"]) + sum(len(c["output_ids"]) for c in rest) == 30
    assert cache_engine.get_stats()["cache_size"] == len(prompt) + 30 - 1
    assert cache_engine.flush_cache() is True
    stats = cache_engine.get_stats()
    assert stats["cache_size"] == 0 and stats["kv_pool_used"] == 0
    assert cache_engine.runner.kv_pool.used() == 0
    cache_engine.idle_integrity()
    again = cache_engine.generate(input_ids=prompt, sampling_params=greedy(4))
    assert again["meta_info"]["cached_tokens"] == 0


# ---- 8. prompt logprobs with a cache hit -----------------------------------------------------------
def test_prompt_logprobs_with_cache_hit(cache_engine):
    prompt = rand_ids(8, 120)
    other = prompt[:100] + rand_ids(9, 60)
    lp = {"sampling_params": greedy(6), "return_logprob": True}

    assert cache_engine.flush_cache()
    cold = cache_engine.generate(input_ids=prompt, logprob_start_len=5, **lp)
    assert cache_engine.flush_cache()
    cold_other = cache_engine.generate(input_ids=other, logprob_start_len=120, **lp)
    assert cold["meta_info"]["cached_tokens"] == cold_other["meta_info"]["cached_tokens"] == 0

    assert cache_engine.flush_cache()
    cache_engine.generate(input_ids=prompt, sampling_params=greedy(6))  # warm the cache
    warm = cache_engine.generate(input_ids=prompt, logprob_start_len=5, **lp)
    # Positions from logprob_start_len - 1 on must be computed: their logits score the asked tokens.
    assert warm["meta_info"]["cached_tokens"] == 4
    entries = warm["meta_info"]["input_token_logprobs"]
    assert len(entries) == len(prompt) - 5 == len(cold["meta_info"]["input_token_logprobs"])
    assert [e[1] for e in entries] == prompt[5:]
    assert_close(logprob_values(entries), logprob_values(cold["meta_info"]["input_token_logprobs"]), 1e-4)
    assert warm["output_ids"] == cold["output_ids"]

    # A prompt sharing 100 cached tokens, logprobs asked from position 120: the whole prefix is a hit.
    warm_other = cache_engine.generate(input_ids=other, logprob_start_len=120, **lp)
    assert warm_other["meta_info"]["cached_tokens"] == 100
    entries = warm_other["meta_info"]["input_token_logprobs"]
    assert len(entries) == len(other) - 120
    assert_close(logprob_values(entries), logprob_values(cold_other["meta_info"]["input_token_logprobs"]), 1e-4)
    assert_close(
        logprob_values(warm_other["meta_info"]["output_token_logprobs"]),
        logprob_values(cold_other["meta_info"]["output_token_logprobs"]),
        1e-4,
    )
    assert warm_other["output_ids"] == cold_other["output_ids"]
    cache_engine.idle_integrity()
