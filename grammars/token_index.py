"""Token index: for every DFA state, the tokens allowed next and the state each one leads to.

Built once per (automaton, vocabulary), with numpy over the whole vocabulary at once. The vocabulary's
byte strings form a trie (built once per vocabulary and cached on it); the walk keeps an array of live
(origin state, trie node, current state) triples and advances all of them one trie level per numpy
step, so a token whose first byte is already dead for a state costs nothing past that byte, and no
Python loop runs over tokens or states.

Stored per state: a packed bitmask of `ceil(V / 32)` int32 words (bit `t % 32` of word `t // 32` set
when token t is allowed; EOS exactly in accepting states) for the per-step mask, and a compact
next-state table for `advance`: the state most allowed tokens lead to (`default_next`; inside a JSON
string almost every token leads back to the same state) plus a CSR list of the exceptions, sorted by
token id. That is a few hundred entries per state where a full table would hold tens of thousands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loomlm.grammars.limits import Budget
from loomlm.grammars.vocabulary import Vocabulary

EOS_STATE = -2   # the state after EOS: nothing follows


@dataclass(frozen=True)
class TokenTrie:
    """Nodes in breadth-first order (node 0 = root, so a level is a contiguous range).
    Children of a node are contiguous: `child_start[n] .. child_start[n] + child_count[n]`."""

    byte: np.ndarray          # [N] uint8, the byte on the edge into the node
    child_start: np.ndarray   # [N] int64
    child_count: np.ndarray   # [N] int64
    token_start: np.ndarray   # [N] int64, tokens spelled exactly by the node: token_ids[start:start+count]
    token_count: np.ndarray   # [N] int64
    token_ids: np.ndarray     # [T] int64


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
    return TokenTrie(byte, child_start, child_count, token_start, token_count, token_ids)


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [starts[i], starts[i] + counts[i]): (owner index i, element) of every element."""
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = np.cumsum(counts) - counts
    return owner, starts[owner] + (np.arange(len(owner)) - offsets[owner])


@dataclass(frozen=True)
class TokenIndex:
    masks: np.ndarray          # [S, W] int32 packed allowed-token bitmask
    default_next: np.ndarray   # [S] int32, the next state of allowed tokens not listed as exceptions
    offsets: np.ndarray        # [S + 1] int64 CSR row starts of the exceptions
    tokens: np.ndarray         # [E] int32 exception tokens, sorted within each state
    next_states: np.ndarray    # [E] int32
    num_allowed: np.ndarray    # [S] int64 non-EOS tokens allowed
    vocab_size: int

    def is_allowed(self, state: int, token: int) -> bool:
        return 0 <= token < self.vocab_size and bool((int(self.masks[state, token >> 5]) >> (token & 31)) & 1)

    def advance(self, state: int, token: int) -> int:
        """Next state, `EOS_STATE` for EOS in an accepting state, or -1 if `token` is not allowed."""
        if not self.is_allowed(state, token):
            return -1
        lo, hi = int(self.offsets[state]), int(self.offsets[state + 1])
        i = lo + int(np.searchsorted(self.tokens[lo:hi], token))
        if i < hi and self.tokens[i] == token:
            return int(self.next_states[i])
        return int(self.default_next[state])

    def allowed(self, state: int) -> np.ndarray:
        """Bool mask [V] of the tokens allowed in `state` (EOS included when accepting)."""
        bits = np.unpackbits(self.masks[state].view(np.uint8), bitorder="little")
        return bits[:self.vocab_size].astype(bool)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.masks, self.default_next, self.offsets, self.tokens,
                                      self.next_states))


def build_token_index(transitions: np.ndarray, accepting: np.ndarray, vocab: Vocabulary,
                      budget: Budget) -> TokenIndex:
    trie = token_trie(vocab)
    S = len(transitions)
    V = vocab.size
    table = transitions.astype(np.int64)
    origin = np.arange(S, dtype=np.int64)
    node = np.zeros(S, dtype=np.int64)
    cur = np.arange(S, dtype=np.int64)
    out_o, out_t, out_s = [], [], []
    while len(origin):
        budget.check_time()
        owner, child = _expand(trie.child_start[node], trie.child_count[node])
        nxt = table[cur[owner], trie.byte[child]]
        keep = nxt >= 0
        origin, node, cur = origin[owner[keep]], child[keep], nxt[keep]
        has_tok = trie.token_count[node] > 0
        if has_tok.any():
            o, n, c = origin[has_tok], node[has_tok], cur[has_tok]
            towner, tpos = _expand(trie.token_start[n], trie.token_count[n])
            out_o.append(o[towner])
            out_t.append(trie.token_ids[tpos])
            out_s.append(c[towner])
    o = np.concatenate(out_o) if out_o else np.zeros(0, np.int64)
    t = np.concatenate(out_t) if out_t else np.zeros(0, np.int64)
    s = np.concatenate(out_s) if out_s else np.zeros(0, np.int64)
    num_allowed = np.bincount(o, minlength=S).astype(np.int64)
    # EOS is allowed exactly in accepting states, and as a way out of a state no token can continue
    # (possible only with vocabularies that lack some single bytes).
    eos = np.array(sorted(vocab.eos_token_ids), dtype=np.int64)
    ends = np.flatnonzero(accepting | (num_allowed == 0))
    if len(eos) and len(ends):
        o = np.concatenate([o, np.repeat(ends, len(eos))])
        t = np.concatenate([t, np.tile(eos, len(ends))])
        s = np.concatenate([s, np.full(len(ends) * len(eos), EOS_STATE, dtype=np.int64)])
    order = np.lexsort((t, o))
    o, t, s = o[order], t[order], s[order]
    masks = _pack(o, t, S, V)
    default = _most_common_next(o, s, S)
    exc = s != default[o]
    o, t, s = o[exc], t[exc], s[exc]
    offsets = np.zeros(S + 1, dtype=np.int64)
    np.cumsum(np.bincount(o, minlength=S), out=offsets[1:])
    return TokenIndex(masks, default.astype(np.int32), offsets, t.astype(np.int32), s.astype(np.int32),
                      num_allowed, V)


def _most_common_next(states: np.ndarray, nexts: np.ndarray, S: int) -> np.ndarray:
    """Per state, the next state most of its allowed tokens lead to (-1 for a state with none)."""
    default = np.full(S, -1, dtype=np.int64)
    if len(states) == 0:
        return default
    keys, counts = np.unique(states * (S + 3) + (nexts + 3), return_counts=True)
    key_state = keys // (S + 3)
    order = np.lexsort((-counts, key_state))          # per state, the largest count first
    first = order[np.concatenate([[True], key_state[order][1:] != key_state[order][:-1]])]
    default[key_state[first]] = keys[first] % (S + 3) - 3
    return default


def _pack(states: np.ndarray, tokens: np.ndarray, S: int, V: int) -> np.ndarray:
    """[S, ceil(V/32)] int32 bitmask from (state, token) pairs sorted by state then token."""
    W = (V + 31) // 32
    masks = np.zeros(S * W, dtype=np.int64)
    if len(states):
        keys = states * W + (tokens >> 5)
        bits = np.left_shift(np.int64(1), tokens & 31)
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        masks[keys[starts]] = np.add.reduceat(bits, starts)   # distinct bits: sum == or
    return masks.astype(np.uint32).view(np.int32).reshape(S, W)
