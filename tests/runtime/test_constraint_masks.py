"""ConstraintMasks and GrammarState through the `Guide` protocol alone: the batched mask of every sampler
row equals its guide's own allowed set, through guides coming and going (lazy row fills, free-list
reuse, eviction at the size bound), for the byte-DFA guides and for a guide that is no DFA at all."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.grammars import REJECTED, Guide, Vocabulary, allowed_tokens, bitmask_words, compile_choices, compile_regex
from loomlm.runtime.constrained import ConstraintMasks, GrammarState

VOCAB = Vocabulary.from_dict(
    {0: "", 1: "a", 2: "b", 3: "ab", 4: "1", 5: "12", 6: "-", 7: "é", 8: '"', 9: " "}, eos_token_ids=[0], size=70
)  # padded: logits wider than the tokenizer
GUIDES = [
    compile_regex(r"(ab)+", VOCAB),
    compile_regex(r"-?[0-9]+", VOCAB),
    compile_choices(["a", "b b"], VOCAB),
    compile_regex(r'"[abé ]*"', VOCAB),
]
ROWS = 6


class ParenGuide:
    """Balanced parentheses nested at most `max_depth` deep: a counter, not an automaton table. States
    are tuples (("open", depth), or ("done",) after EOS) and each state is its own mask key. Written
    against the protocol only, to show the runtime needs nothing else."""

    def __init__(self, vocab: Vocabulary, max_depth: int = 3):
        self.vocab = vocab
        self.max_depth = max_depth
        self.description = f"parentheses to depth {max_depth}"
        self.fills = 0  # how often the runtime asked for a mask row

    @property
    def initial_state(self) -> tuple:
        return ("open", 0)

    def advance(self, state: tuple, token_id: int):
        if state == ("done",):
            return REJECTED
        if token_id in self.vocab.eos_token_ids:
            return ("done",) if state[1] == 0 else REJECTED
        data = self.vocab.token_bytes[token_id]
        depth = state[1]
        for byte in data:
            depth += {ord("("): 1, ord(")"): -1}.get(byte, 99)
            if not 0 <= depth <= self.max_depth:
                return REJECTED
        return ("open", depth) if data else REJECTED

    def fill_bitmask(self, state: tuple, out: np.ndarray) -> None:
        self.fills += 1
        allowed = np.array([self.advance(state, t) is not REJECTED for t in range(self.vocab.size)])
        bits = np.zeros(32 * len(out), dtype=np.uint8)
        bits[: len(allowed)] = allowed
        out[:] = np.packbits(bits, bitorder="little").view(np.int32)

    def mask_key(self, state: tuple) -> tuple:
        return state

    def is_accepting(self, state: tuple) -> bool:
        return state == ("done",) or state[1] == 0

    def is_finished(self, state: tuple) -> bool:
        return state == ("done",)

    def forced_bytes(self, state: tuple) -> bytes:
        return b")" if state[0] == "open" and state[1] == self.max_depth else b""


PAREN_VOCAB = Vocabulary.from_dict(
    {0: "", 1: "(", 2: ")", 3: "()", 4: "((", 5: "))", 6: "x", 7: ")("}, eos_token_ids=[0], size=40
)


def _allowed_rows(masks: ConstraintMasks, rows: list[int], vocab_size: int) -> np.ndarray:
    out = masks.apply(torch.zeros(len(rows), vocab_size), torch.tensor(rows))
    return torch.isfinite(out).numpy()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["begin", "end", "step"]),
            st.integers(0, ROWS - 1),
            st.integers(0, len(GUIDES) - 1),
            st.integers(0, 10**6),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([1 << 20, 1]),
)  # a roomy arena, and one at its smallest (evicting on most fills)
def test_batched_masks_equal_each_guides_allowed_set(ops, cache_bytes) -> None:
    masks = ConstraintMasks(VOCAB.size, ROWS, torch.device("cpu"), max_cache_bytes=cache_bytes)
    states: dict[int, GrammarState] = {}
    for op, row, g, pick in ops:
        if op == "begin" and row not in states:
            states[row] = GrammarState(GUIDES[g])
            masks.begin(row, states[row])
        elif op == "end" and row in states:
            masks.end(row)
            del states[row]
        elif op == "step" and row in states:
            gs = states[row]
            allowed = np.flatnonzero(allowed_tokens(gs.guide, gs.state))
            allowed = allowed[~np.isin(allowed, list(VOCAB.eos_token_ids))]
            if len(allowed):
                gs.advance(int(allowed[pick % len(allowed)]))
                masks.update(row)
        got = _allowed_rows(masks, list(range(ROWS)), VOCAB.size)
        for r in range(ROWS):
            expected = allowed_tokens(states[r].guide, states[r].state) if r in states else np.ones(VOCAB.size, bool)
            assert (got[r] == expected).all(), (r, ops)
        assert masks.num_rows <= masks.max_cached_rows
    assert masks.active == bool(states)
    for r in list(states):
        masks.end(r)
    assert not masks.active and (masks.arena_row == 0).all() and masks.cached_rows == 0


def test_rows_of_guides_that_leave_are_reused() -> None:
    masks = ConstraintMasks(VOCAB.size, 2, torch.device("cpu"))
    for _ in range(5):  # the same guide objects come and go: their rows are reclaimed
        for g in GUIDES:
            masks.begin(0, GrammarState(g))
            masks.end(0)
    assert masks.cached_rows == 0 and masks.num_rows == 2  # row 0 and one row, reused by every guide
    live = GrammarState(GUIDES[0])
    masks.begin(1, live)
    assert masks.cached_rows == 1  # rows are filled lazily: only the initial state's mask class
    assert (_allowed_rows(masks, [1], VOCAB.size)[0] == GUIDES[0].allowed_tokens(0)).all()


def test_a_guide_that_is_no_dfa_plugs_into_masks_and_grammar_state() -> None:
    guide = ParenGuide(PAREN_VOCAB)
    assert isinstance(guide, Guide) and isinstance(GUIDES[0], Guide)
    masks = ConstraintMasks(PAREN_VOCAB.size, 3, torch.device("cpu"))
    gs, other = GrammarState(guide), GrammarState(ParenGuide(PAREN_VOCAB, max_depth=1))
    masks.begin(0, gs)
    masks.begin(2, other)
    tokens = {text: i for i, text in enumerate(["<eos>", "(", ")", "()", "((", "))", "x", ")("])}
    for text in ["((", "(", ")(", "))", "()", ")"]:
        allowed = _allowed_rows(masks, [0, 1, 2], PAREN_VOCAB.size)
        assert (allowed[0] == allowed_tokens(guide, gs.state)).all()
        assert allowed[1].all()  # an unconstrained row in the same batch
        assert (allowed[2] == allowed_tokens(other.guide, other.state)).all()
        assert allowed[0][tokens[text]]
        gs.advance(tokens[text])
        masks.update(0)
        assert not gs.rejected
    assert gs.state == ("open", 0) and gs.guide.is_accepting(gs.state) and not gs.finished
    fills = guide.fills
    masks.update(0)  # a state seen before: a cached row, no new fill
    assert guide.fills == fills
    gs.advance(tokens[")"])  # below depth 0: rejected, the state is kept
    assert gs.rejected and gs.state == ("open", 0)
    gs.rejected = False
    gs.advance(0)  # EOS in an accepting state
    assert gs.finished and gs.plan_jump(0, lambda text: [], 8) is None
    masks.end(0)
    masks.end(2)
    assert not masks.active and masks.cached_rows == 0


def test_jump_forward_works_through_the_protocol() -> None:
    guide = ParenGuide(PAREN_VOCAB, max_depth=2)
    by_text = {PAREN_VOCAB.token_bytes[i].decode(): i for i in range(1, 8)}

    def encode(text: str) -> list[int]:  # greedy longest-first tokenizer over the tiny vocabulary
        out, i = [], 0
        while i < len(text):
            piece = text[i : i + 2] if text[i : i + 2] in by_text else text[i]
            out.append(by_text[piece])
            i += len(piece)
        return out

    gs = GrammarState(guide)
    gs.advance(by_text["(("])  # depth 2 = max: the next byte is forced to be ")"
    plan = gs.plan_jump(by_text["(("], encode, max_tokens=8)
    assert plan is not None and plan.num_replaced == 1 and PAREN_VOCAB.decode_bytes(plan.tokens) == b"(()"
    gs.apply_jump(plan)
    assert gs.state == ("open", 1)


def test_evicted_rows_are_filled_again_and_the_device_copy_follows() -> None:
    guide = ParenGuide(PAREN_VOCAB, max_depth=9)
    masks = ConstraintMasks(PAREN_VOCAB.size, 2, torch.device("cpu"), max_cache_bytes=1)
    assert masks.max_cached_rows == 4 and bitmask_words(PAREN_VOCAB.size) == masks.words
    gs = GrammarState(guide)
    masks.begin(0, gs)
    for step in range(16):  # depths 0..8 and back: more distinct states than the arena holds
        gs.advance(1 if step < 8 else 2)
        masks.update(0)
        assert masks.num_rows <= masks.max_cached_rows
        assert (_allowed_rows(masks, [0], PAREN_VOCAB.size)[0] == allowed_tokens(guide, gs.state)).all()
        # What CUDA gathers from: the device copy, synced with the rows filled since the last step.
        device_arena = masks._synced_device_arena().numpy()
        used = slice(0, masks.num_rows)
        assert (device_arena[used] == masks.arena[used]).all()
    assert guide.fills > masks.max_cached_rows  # evicted states were filled again on their way back
