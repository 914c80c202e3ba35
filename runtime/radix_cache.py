"""Radix prefix cache (page size 1): a token-keyed radix tree whose nodes own KV slots.

Every non-root node holds an edge `key` (token ids) and a `value` (int64 CPU tensor of KV slot indices,
one per token). The path root -> node spells a cached token prefix; the concatenated values are the KV
slots holding that prefix's keys/values. A request with a cached prefix reuses those slots instead of
recomputing them.

Ownership: every slot in a node's value is owned by the tree; it goes back to the `KVPool` only when its
node is evicted or the tree is reset. A running request pins its prefix with `inc_lock_ref(last_node)`
(which counts on every node up to the root) and unpins it with `dec_lock_ref`; locked nodes are never
evicted.

Eviction frees unlocked leaves in LRU order. Candidates live in a heap with lazy invalidation: an entry
`(last_access, seq, node)` is pushed whenever a node becomes (or is touched while being) an unlocked leaf,
and is skipped on pop when it no longer describes the node. Invariant: every unlocked non-root leaf has a
valid heap entry, so `evict` never scans the tree.

Namespaces: each namespace key has its own root (created lazily); entries are never shared across roots.
The engine passes a request's `cache_salt` as its namespace.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from loomlm.runtime.memory_pool import KVPool

_EMPTY = torch.empty(0, dtype=torch.int64)


class TreeNode:
    """A radix tree node. Roots (one per namespace) have an empty key and value and `is_root=True`."""

    __slots__ = ("key", "value", "children", "parent", "lock_ref", "last_access", "is_root", "removed")

    def __init__(
        self,
        key: list[int],
        value: torch.Tensor,
        parent: TreeNode | None,
        last_access: int = 0,
        lock_ref: int = 0,
        is_root: bool = False,
    ):
        self.key = key  # edge tokens; non-empty for non-roots
        self.value = value  # int64 CPU slots, len(value) == len(key)
        self.children: dict[int, TreeNode] = {}  # first token of child's key -> child
        self.parent = parent
        self.lock_ref = lock_ref  # locks held on this node or any descendant
        self.last_access = last_access  # logical clock; parent's >= every child's
        self.is_root = is_root
        self.removed = False  # set once evicted / reset: heap entries go stale

    def __repr__(self) -> str:
        return f"TreeNode(len={len(self.key)}, head={self.key[:4]}, lock_ref={self.lock_ref}, root={self.is_root})"


@dataclass
class MatchResult:
    slots: torch.Tensor  # int64 [n] CPU: slots of the matched tokens, in order
    last_node: TreeNode  # its root->node path covers exactly the n matched tokens (namespace root if n == 0)


def _as_list(tokens: Sequence[int]) -> list[int]:
    if isinstance(tokens, list):
        return tokens
    if isinstance(tokens, torch.Tensor):
        return tokens.tolist()
    return list(tokens)


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the common prefix; slice comparisons run in C, the search is binary."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _mismatch(key: list[int], tokens: list[int], start: int) -> int:
    """Length of the common prefix of `key` and `tokens[start:]` (caller knows it is not all of `key`)."""
    return common_prefix_len(key, tokens[start : start + len(key)])


class RadixCache:
    def __init__(self, kv_pool: KVPool):
        self.kv_pool = kv_pool
        self._roots: dict[Hashable, TreeNode] = {}
        self._heap: list[tuple[int, int, TreeNode]] = []
        self._seq = itertools.count()
        self._clock = 0
        self._num_nodes = 0  # non-root nodes
        self._evictable = 0  # tokens in non-root nodes with lock_ref == 0
        self._protected = 0  # tokens in non-root nodes with lock_ref > 0
        self.evicted_tokens = 0  # cumulative tokens freed by evict()

    # ------------------------------------------------------------------ helpers

    def _root(self, namespace: Hashable | None) -> TreeNode:
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[namespace] = TreeNode([], _EMPTY, None, is_root=True)
        return root

    def _push(self, node: TreeNode) -> None:
        heapq.heappush(self._heap, (node.last_access, next(self._seq), node))
        if len(self._heap) > 2 * self._num_nodes + 1024:
            self._compact_heap()

    @staticmethod
    def _entry_valid(entry: tuple[int, int, TreeNode]) -> bool:
        node = entry[2]
        return not node.removed and not node.children and node.lock_ref == 0 and node.last_access == entry[0]

    def _compact_heap(self) -> None:
        seen: set[int] = set()
        kept = []
        for entry in self._heap:
            if self._entry_valid(entry) and id(entry[2]) not in seen:
                seen.add(id(entry[2]))
                kept.append(entry)
        heapq.heapify(kept)
        self._heap = kept

    def _touch(self, node: TreeNode) -> None:
        """Stamp node and its ancestors with a new time; re-register it if it is an unlocked leaf."""
        self._clock += 1
        now = self._clock
        n = node
        while not n.is_root:
            n.last_access = now
            n = n.parent  # type: ignore[assignment]
        if not node.is_root and not node.children and node.lock_ref == 0:
            self._push(node)

    def _split(self, child: TreeNode, p: int) -> TreeNode:
        """Split `child`'s edge after `p` tokens (0 < p < len). The child object keeps the tail, so its
        heap entries and any outstanding references (e.g. locked last_nodes) stay valid."""
        parent = child.parent
        assert parent is not None
        # The new head covers the same locks as the child (every lock at/below child passes through it),
        # so the lock_ref copy keeps the counters unchanged.
        head = TreeNode(child.key[:p], child.value[:p], parent, child.last_access, child.lock_ref)
        child.key = child.key[p:]
        child.value = child.value[p:]
        child.parent = head
        head.children[child.key[0]] = child
        parent.children[head.key[0]] = head
        self._num_nodes += 1
        return head

    # ------------------------------------------------------------------ lookup / insert

    def _walk(
        self, tokens: list[int], namespace: Hashable | None, split_at_end: bool
    ) -> tuple[TreeNode, int, list[torch.Tensor]]:
        """Follow `tokens` down the tree: (deepest node reached, tokens matched, the tree's slot tensors
        for them). A match ending inside an edge splits it when `split_at_end` or when tokens remain
        (they branch off there); otherwise that edge's node is returned with only its matched slots."""
        node = self._root(namespace)
        values: list[torch.Tensor] = []
        i, n = 0, len(tokens)
        while i < n:
            child = node.children.get(tokens[i])
            if child is None:
                break
            key = child.key
            klen = len(key)
            if key == tokens[i : i + klen]:  # whole edge matches (C-level compare)
                values.append(child.value)
                node = child
                i += klen
                continue
            p = _mismatch(key, tokens, i)  # 1 <= p < klen: first token matched via children dict
            i += p
            if split_at_end or i < n:
                node = self._split(child, p)
                values.append(node.value)
            else:
                node = child
                values.append(child.value[:p])
            break
        return node, i, values

    def match_prefix(self, tokens: Sequence[int], namespace: Hashable | None = None) -> MatchResult:
        """Longest cached prefix of `tokens`. Splits an edge if the match ends inside it, and refreshes
        the access time of every node on the matched path."""
        node, _, values = self._walk(_as_list(tokens), namespace, split_at_end=True)
        self._touch(node)
        if not values:
            slots = _EMPTY.clone()
        elif len(values) == 1:
            slots = values[0].clone()
        else:
            slots = torch.cat(values)
        return MatchResult(slots, node)

    def insert(self, tokens: Sequence[int], slots: torch.Tensor, namespace: Hashable | None = None) -> int:
        """Cache `tokens` -> `slots`; return how many leading tokens were already cached. For those, a
        given slot that differs from the tree's is freed to the pool (equal ones are the caller's own
        matched prefix). The rest become a new leaf owning its slots. Refreshes access times on the path.
        Tokens ending inside an edge do not split it."""
        tokens = _as_list(tokens)
        n = len(tokens)
        slots = slots.to(device="cpu", dtype=torch.int64)
        if slots.dim() != 1 or slots.numel() != n:
            raise ValueError(f"insert needs one slot per token: {n} tokens, slots of shape {tuple(slots.shape)}")
        node, matched, tree_values = self._walk(tokens, namespace, split_at_end=False)
        if matched:
            old = tree_values[0] if len(tree_values) == 1 else torch.cat(tree_values)
            given = slots[:matched]
            dup = given[given != old]
            if dup.numel():
                self.kv_pool.free(dup)
        if matched < n:
            leaf = TreeNode(tokens[matched:], slots[matched:].clone(), node)
            node.children[tokens[matched]] = leaf
            self._num_nodes += 1
            self._evictable += n - matched
            node = leaf
        if not node.is_root:
            self._touch(node)
        return matched

    # ------------------------------------------------------------------ locks

    def inc_lock_ref(self, node: TreeNode) -> None:
        if node.removed:
            raise RuntimeError("cannot lock a node that has been evicted")
        while not node.is_root:
            if node.lock_ref == 0:
                k = len(node.key)
                self._evictable -= k
                self._protected += k
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def dec_lock_ref(self, node: TreeNode) -> None:
        # Ancestors' lock_ref >= node's, so checking the node itself guards the whole path.
        if not node.is_root and node.lock_ref <= 0:
            raise RuntimeError("dec_lock_ref would make a lock count negative")
        while not node.is_root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                k = len(node.key)
                self._evictable += k
                self._protected -= k
                if not node.children:
                    self._push(node)
            node = node.parent  # type: ignore[assignment]

    # ------------------------------------------------------------------ eviction

    def evict(self, num_tokens: int) -> int:
        """Free unlocked leaves, least recently used first, until >= num_tokens freed or none is left."""
        freed = 0
        out: list[torch.Tensor] = []
        heap = self._heap
        while freed < num_tokens and heap:
            entry = heapq.heappop(heap)
            if not self._entry_valid(entry):
                continue
            node = entry[2]
            parent = node.parent
            assert parent is not None
            del parent.children[node.key[0]]
            node.removed = True
            self._num_nodes -= 1
            k = len(node.key)
            self._evictable -= k
            freed += k
            out.append(node.value)
            if not parent.is_root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, next(self._seq), parent))
        if out:
            self.kv_pool.free(out[0] if len(out) == 1 else torch.cat(out))
        self.evicted_tokens += freed
        return freed

    # ------------------------------------------------------------------ sizes / inspection

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def total_size(self) -> int:
        return self._evictable + self._protected

    def path_slots(self, node: TreeNode) -> torch.Tensor:
        """Slots root -> node (no LRU update, no split)."""
        values = []
        while not node.is_root:
            values.append(node.value)
            node = node.parent  # type: ignore[assignment]
        if not values:
            return _EMPTY.clone()
        values.reverse()
        return torch.cat(values)

    def _nodes(self) -> list[TreeNode]:
        """All non-root nodes (DFS)."""
        out: list[TreeNode] = []
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            if not node.is_root:
                out.append(node)
            stack.extend(node.children.values())
        return out

    def owned_slots(self) -> torch.Tensor:
        values = [node.value for node in self._nodes()]
        return torch.cat(values) if values else _EMPTY.clone()

    def reset(self) -> None:
        """Free every owned slot and empty the tree. Refused while any node is locked."""
        nodes = self._nodes()
        if any(node.lock_ref for node in nodes):
            raise RuntimeError("cannot reset the radix cache while nodes are locked")
        if nodes:
            self.kv_pool.free(torch.cat([node.value for node in nodes]))
        for node in nodes:
            node.removed = True
        self._roots.clear()
        self._heap = []
        self._num_nodes = 0
        self._evictable = 0
        self._protected = 0

    def check_integrity(self) -> None:
        evictable = protected = count = 0
        values: list[torch.Tensor] = []
        stack: list[TreeNode] = []
        for root in self._roots.values():
            if not (root.is_root and root.parent is None and not root.key and root.lock_ref == 0):
                raise AssertionError("malformed namespace root")
            stack.append(root)
        unlocked_leaves: set[int] = set()
        while stack:
            node = stack.pop()
            if node.removed:
                raise AssertionError("removed node still reachable")
            for first, child in node.children.items():
                if child.is_root or child.parent is not node:
                    raise AssertionError("broken parent pointer")
                if not child.key or child.key[0] != first:
                    raise AssertionError("child not keyed by its first token")
                if child.last_access > node.last_access and not node.is_root:
                    raise AssertionError("child accessed more recently than its parent")
                stack.append(child)
            if node.is_root:
                continue
            count += 1
            k = len(node.key)
            if node.value.dtype != torch.int64 or node.value.dim() != 1 or node.value.numel() != k:
                raise AssertionError("key/value length mismatch")
            # lock_ref = locks taken on this node + sum of children's: >= 0 and >= each child's.
            if node.lock_ref < max(0, sum(c.lock_ref for c in node.children.values())):
                raise AssertionError("lock_ref negative or smaller than the sum of children's")
            if node.lock_ref:
                protected += k
            else:
                evictable += k
                if not node.children:
                    unlocked_leaves.add(id(node))
            values.append(node.value)
        if (evictable, protected, count) != (self._evictable, self._protected, self._num_nodes):
            raise AssertionError(
                f"counters (evictable={self._evictable}, protected={self._protected}, nodes={self._num_nodes}) "
                f"!= recount ({evictable}, {protected}, {count})"
            )
        in_heap = {id(e[2]) for e in self._heap if self._entry_valid(e)}
        if not unlocked_leaves <= in_heap:
            raise AssertionError("an unlocked leaf has no valid eviction heap entry")
        owned = torch.cat(values) if values else _EMPTY
        if torch.unique(owned).numel() != owned.numel():
            raise AssertionError("a slot is owned by two tree positions")
        if owned.numel():
            if owned.min() < 0 or owned.max() >= self.kv_pool.num_slots:
                raise AssertionError("tree owns an out-of-range slot")
            free = self.kv_pool._free[: self.kv_pool.available()]
            if torch.isin(owned, free).any():
                raise AssertionError("tree owns a slot that is on the pool's free list")
