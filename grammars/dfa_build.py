"""NFA over character classes -> minimal byte-level DFA (numpy transition table).

1. The characters named by the NFA's groups split Unicode into *classes* (characters no group tells
   apart; everything never named is one class), so determinisation runs over a few dozen symbols.
2. Subset construction over classes, with the state and time budget checked as states appear.
3. Each class becomes UTF-8 byte-range sequences; multi-byte characters become paths through
   intermediate states, shared between states whose non-ASCII transitions agree.
4. States that cannot reach acceptance are removed (their transitions become -1), then Moore
   partition refinement, vectorised over the [S, 256] table, merges equivalent states.

The result's state 0 is the initial state; `transitions[s, byte]` is the next state or -1 (dead).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from loomlm.grammars.limits import Budget
from loomlm.grammars.regex_nfa import NFA
from loomlm.grammars.utf8 import ByteRanges, code_point_ranges, complement, utf8_sequences

DEAD = -1


def _classes(nfa: NFA) -> tuple[list[list[int]], list[list[ByteRanges]]]:
    """Per group: the class ids it contains. Per class: its UTF-8 byte-range sequences."""
    groups = nfa.groups
    named = sorted(set().union(*(g[0] for g in groups)) if groups else set())
    signatures: dict[tuple[bool, ...], list[str]] = defaultdict(list)
    for ch in named:
        signatures[tuple((ch in chars) != negated for chars, negated in groups)].append(ch)
    other_sig = tuple(negated for _, negated in groups)
    class_sigs = list(signatures) + [other_sig]
    class_seqs: list[list[ByteRanges]] = [
        utf8_sequences(code_point_ranges(sorted(map(ord, chars)))) for chars in signatures.values()
    ]
    class_seqs.append(utf8_sequences(complement(code_point_ranges(sorted(map(ord, named))))))
    group_classes = [[k for k, sig in enumerate(class_sigs) if sig[g] and class_seqs[k]] for g in range(len(groups))]
    return group_classes, class_seqs


def _closures(nfa: NFA) -> list[frozenset[int]]:
    n = len(nfa.eps)
    out: list[frozenset[int] | None] = [None] * n
    for s in range(n):
        seen = {s}
        stack = [s]
        while stack:
            for t in nfa.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        # Only states with a character edge, or the final state, matter for the DFA.
        out[s] = frozenset(t for t in seen if nfa.edges[t] is not None or t == nfa.final)
    return out  # type: ignore[return-value]


def determinise(nfa: NFA, budget: Budget) -> tuple[list[dict[int, int]], list[bool], list[list[ByteRanges]]]:
    """Subset construction over classes: (per state {class: next state}, accepting flags, class seqs)."""
    group_classes, class_seqs = _classes(nfa)
    closures = _closures(nfa)
    start = closures[nfa.start]
    ids: dict[frozenset[int], int] = {start: 0}
    order = [start]
    trans: list[dict[int, int]] = []
    union_memo: dict[frozenset[int], frozenset[int]] = {}
    i = 0
    while i < len(order):
        if i % 256 == 0:
            budget.charge(256)
        targets: dict[int, set[int]] = defaultdict(set)
        for s in order[i]:
            edge = nfa.edges[s]
            if edge is not None:
                for k in group_classes[edge[0]]:
                    targets[k].add(edge[1])
        row: dict[int, int] = {}
        for k, ts in targets.items():
            key = frozenset(ts)
            nxt = union_memo.get(key)
            if nxt is None:
                nxt = union_memo[key] = frozenset().union(*(closures[t] for t in ts))
            j = ids.get(nxt)
            if j is None:
                j = ids[nxt] = len(order)
                order.append(nxt)
                budget.check_states(len(order))
            row[k] = j
        trans.append(row)
        i += 1
    accepting = [nfa.final in d for d in order]
    return trans, accepting, class_seqs


def to_bytes(
    trans: list[dict[int, int]], accepting: list[bool], class_seqs: list[list[ByteRanges]], budget: Budget
) -> tuple[np.ndarray, np.ndarray]:
    """Class-level DFA -> byte-level table [S', 256] int32 and accepting [S'] bool."""
    ascii_ranges = [[s[0] for s in seqs if len(s) == 1] for seqs in class_seqs]
    multi = [[s for s in seqs if len(s) > 1] for seqs in class_seqs]
    rows: list[np.ndarray] = []
    inter_ids: dict[frozenset, int] = {}
    lead_memo: dict[frozenset, np.ndarray] = {}
    pending: list[tuple[int, frozenset]] = []  # intermediate states whose rows are still to fill

    def intermediate(items: frozenset) -> int:
        sid = inter_ids.get(items)
        if sid is None:
            sid = inter_ids[items] = len(trans) + len(inter_ids)
            pending.append((sid, items))
            budget.check_states(len(trans) + len(inter_ids))
        return sid

    def fill(row: np.ndarray, items: list[tuple[ByteRanges, int]]) -> None:
        """Write items (byte-range sequence, target) into `row`: one-byte sequences go straight to
        their target, longer ones through the intermediate state of their remaining bytes."""
        longer = [(seq, t) for seq, t in items if len(seq) > 1]
        for seq, t in items:
            if len(seq) == 1:
                row[seq[0][0] : seq[0][1] + 1] = t
        if not longer:
            return
        cuts = sorted({seq[0][0] for seq, _ in longer} | {seq[0][1] + 1 for seq, _ in longer})
        for lo, hi in zip(cuts, cuts[1:]):
            rest = frozenset((seq[1:], t) for seq, t in longer if seq[0][0] <= lo and hi - 1 <= seq[0][1])
            if rest:
                row[lo:hi] = intermediate(rest)

    for row_map in trans:
        row = np.full(256, DEAD, dtype=np.int32)
        for k, t in row_map.items():
            for lo, hi in ascii_ranges[k]:
                row[lo : hi + 1] = t
        lead_key = frozenset((k, t) for k, t in row_map.items() if multi[k])
        if lead_key:
            lead = lead_memo.get(lead_key)
            if lead is None:
                tmp = np.full(256, DEAD, dtype=np.int32)
                fill(tmp, [(seq, t) for k, t in lead_key for seq in multi[k]])
                lead = lead_memo[lead_key] = tmp[0x80:]
            row[0x80:] = lead
        rows.append(row)
    inter_rows: dict[int, np.ndarray] = {}
    while pending:
        sid, items = pending.pop()
        row = np.full(256, DEAD, dtype=np.int32)
        fill(row, list(items))
        inter_rows[sid] = row
    table = np.stack(rows + [inter_rows[len(trans) + i] for i in range(len(inter_ids))])
    acc = np.zeros(len(table), dtype=bool)
    acc[: len(accepting)] = accepting
    return table, acc


def trim(table: np.ndarray, accepting: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep states reachable from 0 that can reach acceptance; renumber (0 stays the initial state).
    Returns a table of shape [0, 256] when the language is empty."""
    S = len(table)
    # Backward reachability over the edges (grouped by target), frontier by frontier.
    src, byte = np.nonzero(table >= 0)
    dst = table[src, byte].astype(np.int64)
    order = np.argsort(dst, kind="stable")
    dst_sorted, src_by_dst = dst[order], src[order]
    starts = np.searchsorted(dst_sorted, np.arange(S + 1))
    live = accepting.copy()
    frontier = np.flatnonzero(live)
    while len(frontier):
        counts = starts[frontier + 1] - starts[frontier]
        idx = np.repeat(starts[frontier] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        preds = np.unique(src_by_dst[idx])
        frontier = preds[~live[preds]]
        live[frontier] = True
    if not live[0]:
        return np.zeros((0, 256), dtype=np.int32), np.zeros(0, dtype=bool)
    table = np.where((table >= 0) & live[np.where(table >= 0, table, 0)], table, DEAD).astype(np.int32)
    reach = np.zeros(S, dtype=bool)
    reach[0] = True
    frontier = np.array([0])
    while len(frontier):
        nxt = np.unique(table[frontier])
        nxt = nxt[nxt >= 0]
        nxt = nxt[~reach[nxt]]
        reach[nxt] = True
        frontier = nxt
    return _renumber(table, accepting, reach)


def _renumber(table: np.ndarray, accepting: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    new_id = np.full(len(table) + 1, DEAD, dtype=np.int32)  # index -1 (dead) maps to dead
    new_id[:-1][keep] = np.arange(int(keep.sum()), dtype=np.int32)
    return new_id[table[keep]], accepting[keep]


def minimise(table: np.ndarray, accepting: np.ndarray, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """Moore partition refinement: states with the same class and same successor classes merge."""
    S = len(table)
    if S == 0:
        return table, accepting
    # Bytes every state treats alike (all letters of a string body, say) are one column: signatures
    # get a few dozen columns instead of 256.
    columns = np.unique(table.T, axis=0).T  # [S, K]
    cls = accepting.astype(np.int64)
    n_cls = len(np.unique(cls))
    while True:
        budget.charge(S)
        ext = np.append(cls, -1)  # the dead state is its own class
        sig = np.ascontiguousarray(np.column_stack([cls, ext[columns]]))
        keys = sig.view(np.dtype((np.void, sig.dtype.itemsize * sig.shape[1]))).ravel()
        _, new_cls = np.unique(keys, return_inverse=True)
        new_n = int(new_cls.max()) + 1
        cls = new_cls.astype(np.int64)
        if new_n == n_cls:
            break
        n_cls = new_n
    # Representatives: the first state of each class, renumbered so that the initial state is 0.
    order = np.concatenate([[cls[0]], np.setdiff1d(np.unique(cls), [cls[0]])])
    rank = np.empty(n_cls, dtype=np.int32)
    rank[order] = np.arange(n_cls, dtype=np.int32)
    _, first = np.unique(cls, return_index=True)
    reps = first[order]
    ext_rank = np.append(rank[cls], DEAD).astype(np.int32)
    return ext_rank[table[reps]], accepting[reps]
