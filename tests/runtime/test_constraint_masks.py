"""ConstraintMasks: the batched mask of every sampler row equals its guide's own allowed set, through
guides coming and going (arena growth and compaction)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.grammars.guide import compile_choices, compile_regex
from loomlm.grammars.vocabulary import Vocabulary
from loomlm.runtime.constrained import ConstraintMasks, GrammarState

VOCAB = Vocabulary.from_dict({0: "", 1: "a", 2: "b", 3: "ab", 4: "1", 5: "12", 6: "-", 7: "é", 8: '"', 9: " "},
                             eos_token_ids=[0], size=70)   # padded: logits wider than the tokenizer
GUIDES = [compile_regex(r"(ab)+", VOCAB), compile_regex(r"-?[0-9]+", VOCAB), compile_choices(["a", "b b"], VOCAB),
          compile_regex(r'"[abé ]*"', VOCAB)]
ROWS = 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["begin", "end", "step"]), st.integers(0, ROWS - 1),
                          st.integers(0, len(GUIDES) - 1), st.integers(0, 10**6)), min_size=1, max_size=40))
def test_batched_masks_equal_each_guides_allowed_set(ops) -> None:
    masks = ConstraintMasks(VOCAB.size, ROWS, torch.device("cpu"))
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
            allowed = np.flatnonzero(gs.guide.allowed_tokens(gs.state))
            allowed = allowed[~np.isin(allowed, list(VOCAB.eos_token_ids))]
            if len(allowed):
                gs.advance(int(allowed[pick % len(allowed)]))
                masks.update(row)
        rows = torch.arange(ROWS)
        logits = torch.zeros(ROWS, VOCAB.size)
        out = masks.apply(logits, rows)
        for r in range(ROWS):
            expected = states[r].guide.allowed_tokens(states[r].state) if r in states else np.ones(VOCAB.size, bool)
            assert (torch.isfinite(out[r]).numpy() == expected).all(), (r, ops)
    assert masks.active == bool(states)
    for r in list(states):
        masks.end(r)
    assert not masks.active and (masks.arena_row == 0).all()


def test_arena_is_compacted_when_guides_leave() -> None:
    masks = ConstraintMasks(VOCAB.size, 2, torch.device("cpu"))
    for _ in range(5):   # the same guide objects come and go: dead rows are reclaimed
        for g in GUIDES:
            gs = GrammarState(g)
            masks.begin(0, gs)
            masks.end(0)
    live = GrammarState(GUIDES[0])
    masks.begin(1, live)
    assert len(masks.arena) <= 1 + 2 * sum(g.index.num_classes for g in GUIDES)
    out = masks.apply(torch.zeros(1, VOCAB.size), torch.tensor([1]))
    assert (torch.isfinite(out[0]).numpy() == GUIDES[0].allowed_tokens(0)).all()
