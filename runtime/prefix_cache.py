"""Request-level KV ownership on top of the radix tree: match, lock, cache, release.

A holder request's `req_to_token` row maps positions `0 .. kv_len-1` to slots. The first `cache_len` of
those slots are owned by the radix tree (the request holds a lock on `last_node`, whose root path is
exactly those tokens); the rest, `cache_len .. kv_len-1`, are owned by the request alone. So at any time

    kv_pool.used() == tree.total_size() + sum(kv_len - cache_len over holders)

With caching disabled (`tree is None`) nothing is matched or inserted and `cache_len` stays 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loomlm.runtime.forward_context import SharedPrefix
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.radix_cache import RadixCache, TreeNode
from loomlm.runtime.request import Req


@dataclass
class PrefixMatch:
    slots: torch.Tensor  # int64 [n]
    node: TreeNode | None  # None when caching is off

    @property
    def length(self) -> int:
        return int(self.slots.numel())


_EMPTY = torch.zeros(0, dtype=torch.int64)
MIN_SHARED_PREFIX = 32  # shorter shared prefixes are not worth a separate attention pass


def match_limit(req: Req) -> int:
    """How many leading fill tokens may come from the cache.

    At least the last fill token must be computed (its logits give the next token), and prompt positions
    whose logprobs are still owed must be computed too (logits row p scores token p + 1).
    """
    limit = len(req.prompt_ids) + len(req.output_ids) - 1
    if req.scored_upto < len(req.prompt_ids):
        limit = min(limit, max(req.scored_upto - 1, 0))
    return limit


class PrefixCache:
    def __init__(self, kv_pool: KVPool, req_pool: ReqToTokenPool, enabled: bool):
        self.kv_pool = kv_pool
        self.req_pool = req_pool
        self.tree = RadixCache(kv_pool) if enabled else None

    # ---- sizes ---------------------------------------------------------------------------------
    def evictable(self) -> int:
        return self.tree.evictable_size() if self.tree is not None else 0

    def headroom(self) -> int:
        """Slots obtainable now: free ones plus those eviction could free."""
        return self.kv_pool.available() + self.evictable()

    def make_room(self, n: int) -> bool:
        """Evict until `n` slots are free; False when even evicting everything unlocked is not enough."""
        short = n - self.kv_pool.available()
        if short > 0 and self.tree is not None:
            self.tree.evict(short)
        return self.kv_pool.available() >= n

    # ---- admission ---------------------------------------------------------------------------
    def match(self, req: Req) -> PrefixMatch:
        if self.tree is None:
            return PrefixMatch(_EMPTY, None)
        tokens = req.fill_ids[: match_limit(req)]
        m = self.tree.match_prefix(tokens, req.cache_salt)
        return PrefixMatch(m.slots, m.last_node)

    def lock(self, req: Req, match: PrefixMatch) -> None:
        """Give the request (which owns a row and nothing else) the matched prefix."""
        if match.node is not None:
            self.tree.inc_lock_ref(match.node)
        req.last_node = match.node
        n = match.length
        if n:
            self.req_pool.req_to_token[req.row, :n] = match.slots.to(torch.int32)
        req.kv_len = req.cache_len = n

    def unlock(self, req: Req) -> None:
        if req.last_node is not None:
            self.tree.dec_lock_ref(req.last_node)
        req.last_node = None
        req.cache_len = 0

    # ---- caching computed tokens ---------------------------------------------------------------
    def cache_unfinished(self, req: Req) -> None:
        """Put the request's computed tokens in the tree (a fork sibling or its next chunk can hit them)
        and move its lock down to the new end. Duplicates of tokens the tree already had are freed and
        the row is pointed at the tree's slots."""
        if self.tree is None or req.kv_len == req.cache_len:
            return
        tokens = req.fill_ids[: req.kv_len]
        row = self.req_pool.req_to_token[req.row]
        self.tree.insert(tokens, row[: req.kv_len].to(torch.int64), req.cache_salt)
        m = self.tree.match_prefix(tokens, req.cache_salt)
        n = int(m.slots.numel())  # == kv_len unless a full-length insert was impossible (never)
        row[:n] = m.slots.to(torch.int32)
        self.tree.inc_lock_ref(m.last_node)
        self.unlock(req)
        req.last_node = m.last_node
        req.cache_len = n

    def release(self, req: Req, keep: bool) -> None:
        """Give up everything the request holds except its row. `keep`: its computed tokens go into the
        tree (finished or retracted requests); otherwise (aborts, failed steps) its own slots are freed."""
        row = self.req_pool.req_to_token[req.row]
        if keep and self.tree is not None and req.kv_len > req.cache_len:
            self.tree.insert(req.fill_ids[: req.kv_len], row[: req.kv_len].to(torch.int64), req.cache_salt)
        elif req.kv_len > req.cache_len:
            self.kv_pool.free(row[req.cache_len : req.kv_len].to(torch.int64))
        self.unlock(req)
        req.kv_len = 0

    # ---- decode groups -------------------------------------------------------------------------
    def shared_prefix_groups(self, reqs: list[Req]) -> tuple[SharedPrefix, ...]:
        """Group requests by the deepest tree node on their locked path that another request's path
        also passes through; each group's members share that node's root path (slots included)."""
        if self.tree is None or len(reqs) < 2:
            return ()
        paths: list[list[TreeNode]] = []
        passing: dict[int, int] = {}
        for req in reqs:
            path = []
            node = req.last_node
            while node is not None and not node.is_root:
                path.append(node)  # deepest first
                passing[id(node)] = passing.get(id(node), 0) + 1
                node = node.parent
            paths.append(path)
        groups: dict[int, tuple[TreeNode, list[int]]] = {}
        for i, path in enumerate(paths):
            shared = next((n for n in path if passing[id(n)] >= 2), None)
            if shared is not None:
                groups.setdefault(id(shared), (shared, []))[1].append(i)
        out = []
        for node, members in groups.values():
            slots = self.tree.path_slots(node)
            if len(members) >= 2 and slots.numel() >= MIN_SHARED_PREFIX:
                out.append(SharedPrefix(slots, torch.tensor(members, dtype=torch.int64)))
        return tuple(out)

    # ---- maintenance -----------------------------------------------------------------------------
    def flush(self) -> None:
        if self.tree is not None:
            self.tree.reset()

    def check_integrity(self, holders: list[Req]) -> None:
        self.kv_pool.check_integrity()
        cached = 0
        if self.tree is not None:
            self.tree.check_integrity()
            cached = self.tree.total_size()
        own = 0
        for req in holders:
            if not 0 <= req.cache_len <= req.kv_len:
                raise AssertionError(f"request {req.rid}: cache_len {req.cache_len}, kv_len {req.kv_len}")
            own += req.kv_len - req.cache_len
            if req.cache_len:
                path = self.tree.path_slots(req.last_node)
                row = self.req_pool.req_to_token[req.row, : req.cache_len].to(torch.int64)
                if path.numel() != req.cache_len or not torch.equal(path, row):
                    raise AssertionError(f"request {req.rid}: its row disagrees with its locked tree path")
        if self.kv_pool.used() != cached + own:
            raise AssertionError(
                f"KV pool has {self.kv_pool.used()} slots in use; the tree owns {cached} and the requests {own}"
            )
