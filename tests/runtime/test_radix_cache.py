"""Radix prefix cache: a model-based test against a dict oracle, plus deterministic unit tests."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from loomlm.runtime.memory_pool import KVPool
from loomlm.runtime.radix_cache import RadixCache, TreeNode


def make_pool(n: int) -> KVPool:
    return KVPool(n, num_layers=1, num_kv_heads=1, head_dim=1, dtype=torch.float32, device="cpu")


def free_list(pool: KVPool) -> set[int]:
    return set(pool._free[: pool.available()].tolist())


def dump(cache: RadixCache) -> dict[tuple, int]:
    """(namespace, prefix tuple) -> slot for every cached token position."""
    out: dict[tuple, int] = {}
    for ns, root in cache._roots.items():
        stack: list[tuple[TreeNode, tuple[int, ...]]] = [(root, ())]
        while stack:
            node, prefix = stack.pop()
            for tok, slot in zip(node.key, node.value.tolist()):
                prefix = prefix + (tok,)
                out[(ns, prefix)] = slot
            stack.extend((child, prefix) for child in node.children.values())
    return out


def ins(cache: RadixCache, pool: KVPool, tokens, ns=None) -> tuple[int, torch.Tensor]:
    slots = pool.alloc(len(tokens))
    return cache.insert(tokens, slots, ns), slots


# ---------------------------------------------------------------------------------------- model-based

NAMESPACES = [None, "b"]
POOL_SLOTS = 64
tokens_st = st.lists(st.integers(0, 3), min_size=1, max_size=12)
ns_st = st.sampled_from(NAMESPACES)


class RadixModel(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.pool = make_pool(POOL_SLOTS)
        self.cache = RadixCache(self.pool)
        self.oracle: dict[tuple, int] = {}
        self.locks: list[tuple[TreeNode, set[tuple]]] = []  # (locked node, positions it covers)

    def _expected_match(self, ns, tokens) -> list[int]:
        out = []
        for j in range(1, len(tokens) + 1):
            slot = self.oracle.get((ns, tuple(tokens[:j])))
            if slot is None:
                break
            out.append(slot)
        return out

    def _locked_positions(self) -> set[tuple]:
        return set().union(*(cover for _, cover in self.locks))

    def _evict(self, n: int) -> int:
        before = dict(self.oracle)
        used = self.pool.used()
        freed = self.cache.evict(n)
        after = dump(self.cache)
        assert all(before[k] == v for k, v in after.items())  # nothing added or changed
        removed = before.keys() - after.keys()
        assert freed == len(removed)
        assert freed >= n or self.cache.evictable_size() == 0
        assert not removed & self._locked_positions()
        for ns, prefix in after:  # remaining set is prefix-closed,
            for j in range(1, len(prefix)):  # i.e. removals closed under extension
                assert (ns, prefix[:j]) in after
        assert self.pool.used() == used - freed
        assert {before[k] for k in removed} <= free_list(self.pool)
        self.oracle = after
        return freed

    def _match(self, ns, tokens):
        res = self.cache.match_prefix(tokens, ns)
        expected = self._expected_match(ns, tokens)
        assert res.slots.dtype == torch.int64
        assert res.slots.tolist() == expected
        assert torch.equal(self.cache.path_slots(res.last_node), res.slots)
        if not expected:
            assert res.last_node.is_root
        return res

    @rule(ns=ns_st, tokens=tokens_st, reuse_prefix=st.booleans())
    def insert(self, ns, tokens, reuse_prefix):
        if reuse_prefix:  # the scheduler's way: matched prefix slots + fresh slots for the rest
            prefix = self._match(ns, tokens).slots
        else:
            prefix = torch.empty(0, dtype=torch.int64)
        need = len(tokens) - prefix.numel()
        if need > self.pool.available():
            self._evict(need - self.pool.available())
            if need > self.pool.available():
                return
            if reuse_prefix:  # eviction may have dropped part of the unlocked matched prefix
                prefix = self._match(ns, tokens).slots
                need = len(tokens) - prefix.numel()
        slots = torch.cat([prefix, self.pool.alloc(need)])
        expected_old = len(self._expected_match(ns, tokens))
        assert self.cache.insert(tokens, slots, ns) == expected_old
        for j in range(expected_old, len(tokens)):
            self.oracle[(ns, tuple(tokens[: j + 1]))] = int(slots[j])

    @rule(ns=ns_st, tokens=tokens_st)
    def match(self, ns, tokens):
        self._match(ns, tokens)

    @rule(ns=ns_st, tokens=tokens_st)
    def lock(self, ns, tokens):
        res = self._match(ns, tokens)
        self.cache.inc_lock_ref(res.last_node)
        cover = {(ns, tuple(tokens[:j])) for j in range(1, res.slots.numel() + 1)}
        self.locks.append((res.last_node, cover))

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, 1000))
    def unlock(self, i):
        node, _ = self.locks.pop(i % len(self.locks))
        self.cache.dec_lock_ref(node)

    @rule(n=st.integers(0, 30))
    def evict(self, n):
        self._evict(n)

    @invariant()
    def consistent(self):
        self.cache.check_integrity()
        self.pool.check_integrity()
        assert dump(self.cache) == self.oracle
        assert self.pool.used() == self.cache.total_size() == len(self.oracle)
        assert self.cache.protected_size() == len(self._locked_positions())
        assert self.cache.evictable_size() + self.cache.protected_size() == self.cache.total_size()

    def teardown(self):
        if not hasattr(self, "cache"):
            return
        while self.locks:
            self.cache.dec_lock_ref(self.locks.pop()[0])
        self.cache.reset()
        self.cache.check_integrity()
        assert self.cache.total_size() == 0
        assert self.pool.used() == 0
        self.pool.check_integrity()


RadixModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRadixModel = RadixModel.TestCase


# ---------------------------------------------------------------------------------------- unit tests


def test_edge_split_on_partial_match():
    pool = make_pool(16)
    cache = RadixCache(pool)
    _, slots = ins(cache, pool, [1, 2, 3, 4])
    res = cache.match_prefix([1, 2, 9])
    assert res.slots.tolist() == slots[:2].tolist()
    assert res.last_node.key == [1, 2]
    assert [c.key for c in res.last_node.children.values()] == [[3, 4]]
    assert cache.total_size() == 4 and pool.used() == 4
    assert torch.equal(cache.path_slots(res.last_node), slots[:2])
    assert cache.match_prefix([1, 2, 3, 4, 5]).slots.tolist() == slots.tolist()
    cache.check_integrity()


def test_match_on_empty_and_exact():
    pool = make_pool(8)
    cache = RadixCache(pool)
    res = cache.match_prefix([5, 6])
    assert res.slots.numel() == 0 and res.last_node.is_root
    _, slots = ins(cache, pool, (5, 6))
    res = cache.match_prefix(torch.tensor([5, 6]))
    assert res.slots.tolist() == slots.tolist() and res.last_node.key == [5, 6]


def test_lru_order():
    pool = make_pool(16)
    cache = RadixCache(pool)
    for tok in (1, 2, 3):
        ins(cache, pool, [tok])
    cache.match_prefix([1])  # 2 is now the least recently used
    assert cache.evict(1) == 1
    assert cache.match_prefix([2]).slots.numel() == 0
    assert cache.match_prefix([1]).slots.numel() == 1
    assert cache.evict(1) == 1  # then 3 (1 was just touched again)
    assert cache.match_prefix([3]).slots.numel() == 0
    assert cache.evicted_tokens == 2
    cache.check_integrity()


def test_insert_refreshes_lru():
    pool = make_pool(16)
    cache = RadixCache(pool)
    ins(cache, pool, [1])
    ins(cache, pool, [2])
    ins(cache, pool, [1])  # re-insert touches [1]; its duplicate slot is freed
    assert pool.used() == 2
    cache.evict(1)
    assert cache.match_prefix([1]).slots.numel() == 1
    assert cache.match_prefix([2]).slots.numel() == 0


def test_locked_nodes_never_evicted_and_counters():
    pool = make_pool(16)
    cache = RadixCache(pool)
    ins(cache, pool, [1, 2, 3, 4])
    ins(cache, pool, [1, 2, 5])
    assert cache.evictable_size() == 5 and cache.protected_size() == 0
    node = cache.match_prefix([1, 2, 5]).last_node
    cache.inc_lock_ref(node)
    assert cache.protected_size() == 3 and cache.evictable_size() == 2
    cache.inc_lock_ref(node)  # nested locks count
    assert cache.evict(100) == 2  # only [3, 4] can go
    assert cache.match_prefix([1, 2, 5]).slots.numel() == 3
    assert cache.evict(100) == 0
    cache.dec_lock_ref(node)
    assert cache.protected_size() == 3
    cache.dec_lock_ref(node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 3
    cache.check_integrity()
    assert cache.evict(100) == 3
    assert pool.used() == 0 and cache.total_size() == 0
    cache.check_integrity()


def test_lock_survives_split():
    pool = make_pool(16)
    cache = RadixCache(pool)
    _, slots = ins(cache, pool, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(node)
    cache.match_prefix([1, 2, 7])  # splits the locked edge
    cache.check_integrity()
    assert cache.protected_size() == 4
    assert torch.equal(cache.path_slots(node), slots)
    cache.dec_lock_ref(node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 4
    cache.check_integrity()


def test_dedupe_frees_exactly_the_duplicates():
    pool = make_pool(32)
    cache = RadixCache(pool)
    _, a = ins(cache, pool, [1, 2, 3])
    b = pool.alloc(5)
    slots = torch.cat([a[:1], b[1:]])  # position 0 reuses the tree's slot, 1-2 are duplicates
    assert cache.insert([1, 2, 3, 4, 5], slots) == 3
    assert set(b[1:3].tolist()) <= free_list(pool)
    pool.free(b[:1])
    assert pool.used() == 5 == cache.total_size()
    assert cache.match_prefix([1, 2, 3, 4, 5]).slots.tolist() == a.tolist() + b[3:].tolist()
    # The scheduler's way: matched prefix + fresh slots, nothing freed.
    m = cache.match_prefix([1, 2, 3, 9])
    fresh = pool.alloc(1)
    assert cache.insert([1, 2, 3, 9], torch.cat([m.slots, fresh])) == 3
    assert pool.used() == 6 == cache.total_size()
    # Tokens ending inside an edge: all cached, all duplicates freed, no new node.
    assert cache.insert([1, 2, 3, 4], pool.alloc(4)) == 4
    assert pool.used() == 6
    cache.check_integrity()
    with pytest.raises(ValueError):
        cache.insert([1, 2], pool.alloc(3))


def test_namespaces_isolate():
    pool = make_pool(16)
    cache = RadixCache(pool)
    assert ins(cache, pool, [1, 2, 3])[0] == 0
    _, x = ins(cache, pool, [1, 2, 3], ns="x")
    assert pool.used() == 6
    assert cache.match_prefix([1, 2, 3], "x").slots.tolist() == x.tolist()
    other = cache.match_prefix([1, 2, 3], "y")
    assert other.slots.numel() == 0 and other.last_node.is_root
    assert other.last_node is not cache.match_prefix([9]).last_node
    cache.inc_lock_ref(cache.match_prefix([1, 2, 3], "x").last_node)
    assert cache.evict(100) == 3
    assert cache.match_prefix([1, 2, 3]).slots.numel() == 0
    assert cache.match_prefix([1, 2, 3], "x").slots.tolist() == x.tolist()
    cache.check_integrity()


def test_reset_with_lock_raises():
    pool = make_pool(16)
    cache = RadixCache(pool)
    ins(cache, pool, [1, 2])
    ins(cache, pool, [3], ns="x")
    node = cache.match_prefix([1, 2]).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(RuntimeError):
        cache.reset()
    cache.check_integrity()
    cache.dec_lock_ref(node)
    cache.reset()
    assert pool.used() == 0 and cache.total_size() == 0
    assert cache.match_prefix([1, 2]).slots.numel() == 0
    cache.check_integrity()


def test_dec_lock_ref_below_zero_raises():
    pool = make_pool(8)
    cache = RadixCache(pool)
    ins(cache, pool, [1, 2])
    node = cache.match_prefix([1, 2]).last_node
    with pytest.raises(RuntimeError):
        cache.dec_lock_ref(node)
    cache.inc_lock_ref(node)
    cache.dec_lock_ref(node)
    with pytest.raises(RuntimeError):
        cache.dec_lock_ref(node)
    cache.check_integrity()


def test_lock_evicted_node_raises():
    pool = make_pool(8)
    cache = RadixCache(pool)
    ins(cache, pool, [1])
    node = cache.match_prefix([1]).last_node
    cache.evict(1)
    with pytest.raises(RuntimeError):
        cache.inc_lock_ref(node)


def test_evict_empty_tree():
    cache = RadixCache(make_pool(4))
    assert cache.evict(10) == 0
    assert cache.evict(0) == 0
    assert cache.evictable_size() == cache.protected_size() == cache.total_size() == 0


def test_parent_becomes_evictable_after_children():
    pool = make_pool(16)
    cache = RadixCache(pool)
    ins(cache, pool, [1, 2, 3])
    ins(cache, pool, [1, 2, 4])  # [1, 2] -> {[3], [4]}
    assert cache.evict(2) == 2  # both leaves
    assert cache.match_prefix([1, 2]).slots.numel() == 2
    assert cache.evict(1) == 2  # the former parent, now a leaf
    assert pool.used() == 0
    ins(cache, pool, [1, 2, 3])
    ins(cache, pool, [1, 2, 4])
    assert cache.evict(100) == 4  # in a single call too
    assert pool.used() == 0 and cache.total_size() == 0
    cache.check_integrity()


def test_heap_stays_compact():
    pool = make_pool(64)
    cache = RadixCache(pool)
    for tok in range(4):
        ins(cache, pool, [tok, tok])
    node = cache.match_prefix([0, 0]).last_node
    for _ in range(5000):
        cache.inc_lock_ref(node)
        cache.dec_lock_ref(node)
        cache.match_prefix([1, 1])
    assert len(cache._heap) <= 2 * 4 + 1024 + 1
    cache.check_integrity()
    assert cache.evict(100) == 8


def test_long_prompts_roundtrip():
    pool = make_pool(5000)
    cache = RadixCache(pool)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 32000, (1500,), generator=g).tolist()
    ins(cache, pool, base)
    for k in range(20):
        cut = 1000 + 20 * k
        tokens = base[:cut] + [32000 + k] * 10
        m = cache.match_prefix(tokens)
        assert m.slots.numel() == cut
        assert cache.insert(tokens, torch.cat([m.slots, pool.alloc(10)])) == cut
    assert pool.used() == cache.total_size() == 1500 + 200
    cache.check_integrity()
