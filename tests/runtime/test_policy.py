"""Schedule policies on a real radix tree: fcfs order, longest-prefix-first with its starvation bound,
and dfs-weight's depth-first grouping of requests that share prefixes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.policy import MAX_SKIPS, SchedulePolicy
from loomlm.runtime.prefix_cache import PrefixCache
from loomlm.runtime.radix_cache import common_prefix_len
from loomlm.runtime.request import LogprobOptions, Req
from loomlm.runtime.sampling_params import SamplingParams


def make_req(tokens: list[int], arrival: int) -> Req:
    req = Req(
        rid=f"r{arrival}",
        prompt_ids=tokens,
        params=SamplingParams(),
        seed=0,
        logprobs=LogprobOptions(),
        sink=lambda out: None,
        max_new_tokens=4,
        detokenizer=None,
    )  # never detokenized here
    req.arrival = arrival
    req.scored_upto = len(tokens)
    return req


@pytest.fixture
def cache() -> PrefixCache:
    pool = KVPool(1000, num_layers=1, num_kv_heads=1, head_dim=1, dtype=torch.float32, device="cpu")
    return PrefixCache(pool, ReqToTokenPool(4, 64, "cpu"), enabled=True)


def cache_tokens(cache: PrefixCache, tokens: list[int]) -> None:
    cache.tree.insert(tokens, cache.kv_pool.alloc(len(tokens)))


def order(policy: SchedulePolicy, cache: PrefixCache, reqs: list[Req]) -> list[str]:
    return [r.rid for r in policy.order(reqs, cache.match)]


def test_fcfs_is_arrival_order(cache):
    cache_tokens(cache, [1, 2, 3, 4, 5])
    reqs = [make_req([9, 9, 9], 2), make_req([1, 2, 3, 4, 5, 6], 0), make_req([7], 1)]
    assert order(SchedulePolicy("fcfs", True), cache, reqs) == ["r0", "r1", "r2"]


def test_lpm_longest_cached_prefix_first(cache):
    cache_tokens(cache, [1, 2, 3, 4, 5, 6, 7, 8])
    reqs = [
        make_req([9, 9, 9, 9], 0),
        make_req([1, 2, 3, 0, 0], 1),
        make_req([1, 2, 3, 4, 5, 6, 0], 2),
        make_req([1, 0], 3),
    ]
    assert order(SchedulePolicy("lpm", True), cache, reqs) == ["r2", "r1", "r3", "r0"]


def test_lpm_without_cache_falls_back_to_fcfs(cache):
    reqs = [make_req([5, 5], 1), make_req([1, 2], 0)]
    assert order(SchedulePolicy("lpm", False), cache, reqs) == ["r0", "r1"]


def test_lpm_starvation_bound(cache):
    cache_tokens(cache, [1, 2, 3, 4])
    old = make_req([8, 8, 8], 0)
    waiting = [old]
    policy = SchedulePolicy("lpm", True)
    for i in range(1, 2 * MAX_SKIPS):
        newer = make_req([1, 2, 3, 4, i], i)
        first = policy.order(waiting + [newer], cache.match)[0]
        if first is old:
            break
        policy.note_passed_over(waiting, [newer])  # the newer one is admitted, the old one waits
    assert first is old and old.skipped == MAX_SKIPS


def test_dfs_weight_groups_siblings_heaviest_first(cache):
    a, b = [1, 1, 1, 1], [2, 2, 2, 2]
    cache_tokens(cache, a)
    cache_tokens(cache, b)
    # Arrivals alternate between the groups; group b has more waiting requests.
    reqs = [
        make_req(a + [10], 0),
        make_req(b + [11], 1),
        make_req(a + [12], 2),
        make_req(b + [13], 3),
        make_req(b + [14], 4),
        make_req([3, 3], 5),
    ]
    assert order(SchedulePolicy("dfs-weight", True), cache, reqs) == ["r1", "r3", "r4", "r0", "r2", "r5"]


@given(st.lists(st.integers(0, 3), max_size=30), st.lists(st.integers(0, 3), max_size=30))
@settings(max_examples=300, deadline=None)
def test_common_prefix_len_matches_a_scan(a, b):
    expected = 0
    while expected < min(len(a), len(b)) and a[expected] == b[expected]:
        expected += 1
    assert common_prefix_len(a, b) == expected


@pytest.mark.parametrize("name", ["fcfs", "lpm"])
def test_priority_ranks_before_arrival_and_prefix(cache, name):
    cache_tokens(cache, [1, 2, 3, 4, 5])
    reqs = [make_req([1, 2, 3, 4, 5, 6], 0), make_req([9, 9], 1), make_req([8, 8], 2)]
    reqs[2].priority = 5
    assert order(SchedulePolicy(name, True), cache, reqs)[0] == "r2"
