"""Token index: for every DFA state, the tokens allowed next; and how a token moves the state.

Built once per (automaton, vocabulary), with numpy over the whole vocabulary at once. The vocabulary's
byte strings form a trie (built once per vocabulary and cached on it); the walk keeps an array of live
(origin state, trie node, current state) triples and advances all of them one trie level per numpy
step, so a token whose first byte is already dead for a state costs nothing past that byte, and no
Python loop runs over tokens or states.

Mask classes: a token is allowed in a state when its bytes never hit the dead state, which depends only
on the automaton's behaviour up to the longest token's length L. States that agree on acceptance and on
which byte strings of length <= L die are *mask-equivalent* (partition refinement over byte classes, at
most L rounds); the walk runs from one state per class. That turns a bounded repetition such as a
string with maxLength 300 (one state per position, each allowing most of the vocabulary) from 300
walks of the whole trie into a few dozen.

Stored: a packed bitmask of `ceil(V / 32)` int32 words per mask class (bit `t % 32` of word `t // 32`
set when token t is allowed; EOS exactly in accepting states) and the state -> class map, for the
per-step mask; the next-state table is the byte automaton's [S, 256] transition table itself: a token's
next state is a walk over its bytes, which costs a few lookups and no per-token storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from loomlm.grammars.limits import Budget
from loomlm.grammars.vocabulary import Vocabulary

EOS_STATE = -2  # the state after EOS: nothing follows


@dataclass(frozen=True)
class TokenTrie:
    """Nodes in breadth-first order (node 0 = root, so a level is a contiguous range).
    Children of a node are contiguous: `child_start[n] .. child_start[n] + child_count[n]`."""

    byte: np.ndarray  # [N] uint8, the byte on the edge into the node
    child_start: np.ndarray  # [N] int64
    child_count: np.ndarray  # [N] int64
    token_start: np.ndarray  # [N] int64, tokens spelled exactly by the node: token_ids[start:start+count]
    token_count: np.ndarray  # [N] int64
    token_ids: np.ndarray  # [T] int64
    max_depth: int  # bytes of the longest token


def token_trie(vocab: Vocabulary) -> TokenTrie:
    cached = vocab._cache.get("trie")
    if cached is None:
        cached = vocab._cache["trie"] = _build_trie(vocab)
    return cached


def _build_trie(vocab: Vocabulary) -> TokenTrie:
    prefixes: set[bytes] = set()
    for b in vocab.token_bytes:
        for k in range(1, len(b) + 1):
            prefixes.add(b[:k])
    # Breadth-first, and siblings grouped under their parent: sort by (length, parent's rank, byte).
    by_len: dict[int, list[bytes]] = {}
    for p in prefixes:
        by_len.setdefault(len(p), []).append(p)
    order: list[bytes] = [b""]
    rank = {b"": 0}
    for length in sorted(by_len):
        level = sorted(by_len[length], key=lambda p: (rank[p[:-1]], p[-1]))
        for p in level:
            rank[p] = len(order)
            order.append(p)
    N = len(order)
    parent = np.fromiter((rank[p[:-1]] if p else -1 for p in order), dtype=np.int64, count=N)
    byte = np.fromiter((p[-1] if p else 0 for p in order), dtype=np.uint8, count=N)
    child_count = np.bincount(parent[1:], minlength=N).astype(np.int64)
    child_start = np.zeros(N, dtype=np.int64)
    # Children of node n follow all children of nodes < n (same-level order follows parent rank).
    child_start[:] = 1 + np.concatenate([[0], np.cumsum(child_count)[:-1]])
    tok_nodes = [(rank[b], i) for i, b in enumerate(vocab.token_bytes) if b and i not in vocab.eos_token_ids]
    tok_nodes.sort()
    nodes = np.array([n for n, _ in tok_nodes], dtype=np.int64)
    token_ids = np.array([i for _, i in tok_nodes], dtype=np.int64)
    token_count = np.bincount(nodes, minlength=N).astype(np.int64)
    token_start = np.concatenate([[0], np.cumsum(token_count)[:-1]]).astype(np.int64)
    max_depth = max((len(p) for p in prefixes), default=1)
    return TokenTrie(byte, child_start, child_count, token_start, token_count, token_ids, max_depth)


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [starts[i], starts[i] + counts[i]): (owner index i, element) of every element."""
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = np.cumsum(counts) - counts
    return owner, starts[owner] + (np.arange(len(owner)) - offsets[owner])


@dataclass(frozen=True)
class TokenIndex:
    masks: np.ndarray  # [C, W] int32 packed allowed-token bitmask per mask class
    state_class: np.ndarray  # [S] int64, mask class of each state
    num_allowed: np.ndarray  # [C] int64 non-EOS tokens allowed
    vocab_size: int
    transitions: memoryview  # flat [S * 256] int32 next state per (state, byte), -1 dead (fast scalar reads)
    token_bytes: tuple  # the vocabulary's token bytes
    eos_token_ids: frozenset

    @property
    def num_classes(self) -> int:
        return len(self.masks)

    def mask_row(self, state: int) -> np.ndarray:
        return self.masks[self.state_class[state]]

    def is_allowed(self, state: int, token: int) -> bool:
        if not 0 <= token < self.vocab_size:
            return False
        word = int(self.masks[self.state_class[state], token >> 5])
        return bool((word >> (token & 31)) & 1)

    def advance(self, state: int, token: int, rejected: Any = -1) -> Any:
        """Next state, `EOS_STATE` for EOS in an accepting state, or `rejected` if `token` is not allowed.
        The per-token hot path of constrained decoding: `is_allowed` is inlined."""
        if not 0 <= token < self.vocab_size:
            return rejected
        if not (int(self.masks[self.state_class[state], token >> 5]) >> (token & 31)) & 1:
            return rejected
        if token in self.eos_token_ids:
            return EOS_STATE
        table = self.transitions
        for byte in self.token_bytes[token]:
            state = table[state * 256 + byte]
        return state

    def allowed(self, state: int) -> np.ndarray:
        """Bool mask [V] of the tokens allowed in `state` (EOS included when accepting)."""
        bits = np.unpackbits(self.mask_row(state).view(np.uint8), bitorder="little")
        return bits[: self.vocab_size].astype(bool)


def mask_classes(transitions: np.ndarray, accepting: np.ndarray, depth: int, budget: Budget) -> np.ndarray:
    """[S] class ids: states equal in acceptance and in which byte strings of length <= depth die."""
    S = len(transitions)
    # Bytes every state treats alike (e.g. all letters of a string body) collapse into one column.
    columns = np.unique(transitions.T, axis=0)  # [K, S]
    cls = accepting.astype(np.int64)
    n = len(np.unique(cls))
    for _ in range(depth):
        budget.charge(S)
        ext = np.append(cls, -1)  # dead: its own class
        sig = np.ascontiguousarray(np.column_stack([cls, ext[columns.T]]))
        keys = sig.view(np.dtype((np.void, sig.dtype.itemsize * sig.shape[1]))).ravel()
        _, new = np.unique(keys, return_inverse=True)
        new_n = int(new.max()) + 1 if S else 0
        cls = new.astype(np.int64)
        if new_n == n:
            break
        n = new_n
    return cls


def build_token_index(transitions: np.ndarray, accepting: np.ndarray, vocab: Vocabulary, budget: Budget) -> TokenIndex:
    trie = token_trie(vocab)
    V = vocab.size
    state_class = mask_classes(transitions, accepting, trie.max_depth, budget)
    _, reps = np.unique(state_class, return_index=True)  # one state per class
    C = len(reps)
    table = transitions.astype(np.int64)
    origin = np.arange(C, dtype=np.int64)  # the class being walked for
    node = np.zeros(C, dtype=np.int64)
    cur = reps.astype(np.int64)
    out_o, out_t = [], []
    while len(origin):
        budget.charge(len(origin))
        owner, child = _expand(trie.child_start[node], trie.child_count[node])
        nxt = table[cur[owner], trie.byte[child]]
        keep = nxt >= 0
        origin, node, cur = origin[owner[keep]], child[keep], nxt[keep]
        has_tok = trie.token_count[node] > 0
        if has_tok.any():
            o, n = origin[has_tok], node[has_tok]
            towner, tpos = _expand(trie.token_start[n], trie.token_count[n])
            out_o.append(o[towner])
            out_t.append(trie.token_ids[tpos])
    o = np.concatenate(out_o) if out_o else np.zeros(0, np.int64)
    t = np.concatenate(out_t) if out_t else np.zeros(0, np.int64)
    num_allowed = np.bincount(o, minlength=C).astype(np.int64)
    # EOS is allowed exactly in accepting states, and as a way out of a state no token can continue
    # (possible only with vocabularies that lack some single bytes).
    eos = np.array(sorted(vocab.eos_token_ids), dtype=np.int64)
    ends = np.flatnonzero(accepting[reps] | (num_allowed == 0))
    if len(eos) and len(ends):
        o = np.concatenate([o, np.repeat(ends, len(eos))])
        t = np.concatenate([t, np.tile(eos, len(ends))])
    order = np.lexsort((t, o))
    flat = memoryview(np.ascontiguousarray(transitions, dtype=np.int32).ravel())
    return TokenIndex(
        _pack(o[order], t[order], C, V), state_class, num_allowed, V, flat, vocab.token_bytes, vocab.eos_token_ids
    )


def _pack(states: np.ndarray, tokens: np.ndarray, S: int, V: int) -> np.ndarray:
    """[S, ceil(V/32)] int32 bitmask from (state, token) pairs sorted by state then token."""
    W = (V + 31) // 32
    masks = np.zeros(S * W, dtype=np.int64)
    if len(states):
        keys = states * W + (tokens >> 5)
        bits = np.left_shift(np.int64(1), tokens & 31)
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        masks[keys[starts]] = np.add.reduceat(bits, starts)  # distinct bits: sum == or
    return masks.astype(np.uint32).view(np.int32).reshape(S, W)
