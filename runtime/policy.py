"""Schedule policies: the order in which waiting requests are considered for admission.

- `fcfs`: arrival order (a retracted request keeps its arrival, so it goes back to the front).

`fcfs` and `lpm` rank by request priority first (larger first); `dfs-weight` follows the tree only.
- `lpm`: longest cached prefix first, so requests that reuse the cache run while it still holds their
  prefix. A request passed over `MAX_SKIPS` times goes first regardless, which bounds starvation.
- `dfs-weight`: depth-first over the radix tree, heavier subtrees (more waiting requests) first and a
  node's own requests after its subtrees, so the requests sharing a prefix run together.

The cache-aware policies match every waiting request against the tree; above `CACHE_AWARE_MAX_QUEUE`
waiting requests that costs more than it saves, and they fall back to fcfs (as SGLang does).
"""

from __future__ import annotations

from collections.abc import Callable

from loomlm.runtime.prefix_cache import PrefixMatch
from loomlm.runtime.request import Req

MAX_SKIPS = 32
CACHE_AWARE_MAX_QUEUE = 128
# A request that shares at least this many uncached tokens with one admitted in the same step waits
# one step, so that it hits the tokens the other one is computing instead of computing them again.
IN_BATCH_SHARE_MIN = 32


class SchedulePolicy:
    def __init__(self, name: str, cache_enabled: bool):
        self.name = name
        self.cache_aware = cache_enabled and name in ("lpm", "dfs-weight")

    def order(self, waiting: list[Req], match: Callable[[Req], PrefixMatch]) -> list[Req]:
        """Waiting requests in the order to try them (`match` gives a request's cached prefix)."""
        if not self.cache_aware or len(waiting) > CACHE_AWARE_MAX_QUEUE:
            return sorted(waiting, key=lambda r: (-r.priority, r.arrival))
        starving = sorted((r for r in waiting if r.skipped >= MAX_SKIPS), key=lambda r: (-r.priority, r.arrival))
        rest = [(r, match(r)) for r in waiting if r.skipped < MAX_SKIPS]
        if self.name == "lpm":
            rest.sort(key=lambda rm: (-rm[0].priority, -rm[1].length, rm[0].arrival))
            return starving + [r for r, _ in rest]
        return starving + _tree_order(rest)

    def defers_in_batch_sharing(self) -> bool:
        return self.cache_aware

    @staticmethod
    def note_passed_over(waiting: list[Req], admitted: list[Req]) -> None:
        """Count, for each request still waiting, that a later arrival was admitted before it."""
        if not admitted:
            return
        latest = max(r.arrival for r in admitted)
        for req in waiting:
            if req.arrival < latest:
                req.skipped += 1


def _tree_order(matched: list[tuple[Req, PrefixMatch]]) -> list[Req]:
    """Depth-first over the tree nodes the requests matched to, heaviest child subtree first."""
    weight: dict[int, int] = {}
    at_node: dict[int, list[Req]] = {}
    roots: list[object] = []
    for req, m in sorted(matched, key=lambda rm: rm[0].arrival):
        at_node.setdefault(id(m.node), []).append(req)
        node = m.node
        while node is not None:
            key = id(node)
            if key not in weight and node.parent is None:
                roots.append(node)
            weight[key] = weight.get(key, 0) + 1
            node = node.parent
    # Post-order: a node's heavier child subtrees, then the requests that stop at the node itself.
    out: list[Req] = []
    stack: list[tuple[object, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            out.extend(at_node.get(id(node), ()))
            continue
        stack.append((node, True))
        children = [c for c in node.children.values() if id(c) in weight]
        children.sort(key=lambda c: weight[id(c)])  # lightest pushed first, so the heaviest pops first
        stack.extend((c, False) for c in children)
    return out
