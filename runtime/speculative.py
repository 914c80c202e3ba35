"""N-gram speculative decoding (SGLang's `NGRAM`, vLLM's prompt lookup): drafts from a request's own context.

Each decode step, `NgramDrafter.propose` looks for the latest earlier occurrence of the request's last
`max..min` tokens (longest first) in its prompt and output, and drafts the tokens that followed it. The
scheduler then runs one EXTEND-mode *verify* pass per step: request b feeds its last token and its drafts
`d_1..d_k` at positions `kv_len .. kv_len + k`, so logits row j predicts the token after `d_j`. The
sampler samples every row exactly as a decode step at that position would (same parameters, same
counter-based random draw keyed by the output position), and a draft is accepted while it equals the
token sampled before it. Every accepted draft is therefore the token plain decoding would have produced
(the same greedy token, or the same seeded draw from the same distribution), and the first sampled token
that differs, or the one after the last draft, is kept too: a verify pass yields 1 + accepted tokens and
the output is the one speculation off gives. Rejected drafts' K/V slots are freed by the output processor.

Drafting adapts per request: the draft length grows by 2 while every draft is accepted and shrinks by 1
otherwise, and a verify that accepts nothing pauses drafting for 1, 2, 4 .. 16 steps, so text that does
not repeat its context costs almost nothing.

Not drafted for: requests with repetition / frequency / presence penalties (their token counts would
have to be updated between the rows of one pass). Constrained requests draft only tokens their guide
allows, and the guide states after each draft token travel with the draft, for the rows' masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from loomlm.grammars import REJECTED, GrammarError
from loomlm.runtime.request import Req

MAX_PAUSE_STEPS = 16  # longest pause of drafting after verifies that accepted nothing
GROWTH_ON_FULL_ACCEPT = 2


@dataclass(frozen=True)
class Draft:
    """Tokens proposed to follow a request's last token, and (constrained requests) its guide states."""

    tokens: tuple[int, ...]
    states: tuple[Any, ...] | None = None  # guide state after each draft token; None: unconstrained

    def __len__(self) -> int:
        return len(self.tokens)


NO_DRAFT = Draft(())


class Drafter(Protocol):
    """What the scheduler and the output processor call: `NgramDrafter` or `DraftModelDrafter`."""

    def propose(self, reqs: list[Req]) -> list[Draft]: ...

    def observe(self, req: Req, drafted: int, accepted: int) -> None: ...

    def forget(self, req: Req) -> None: ...


class NgramIndex:
    """For each n-gram (n in [min_n, max_n]) of a token sequence, the position right after its latest
    occurrence that has at least one token after it."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.table: dict[tuple[int, ...], int] = {}
        self.indexed = 1  # continuation positions below this are in the table

    def update(self, seq: list[int]) -> None:
        """Index continuation positions up to len(seq) - 1 (a later call indexes only the new ones)."""
        table = self.table
        for p in range(self.indexed, len(seq)):
            for n in range(self.min_n, min(self.max_n, p) + 1):
                table[tuple(seq[p - n : p])] = p
        self.indexed = max(self.indexed, len(seq))

    def lookup(self, seq: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of seq's longest indexed suffix."""
        L = len(seq)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            p = self.table.get(tuple(seq[L - n :]))
            if p is not None:
                return seq[p : min(p + k, L)]
        return []


@dataclass
class DraftState:
    """A request's drafting state (kept on the request, created at its first proposal)."""

    index: NgramIndex
    length: int  # draft length to try next
    pause: int = 0  # steps left without drafting
    misses: int = 0  # consecutive verifies that accepted nothing
    verify_passes: int = 0  # verify passes the request was in (SGLang's `spec_verify_ct`)
    history: list[int] = field(default_factory=list)  # prompt + output as indexed (grown in place)


class NgramDrafter:
    def __init__(self, num_draft_tokens: int, min_window: int, max_window: int, context_length: int):
        self.max_tokens = num_draft_tokens
        self.min_window, self.max_window = min_window, max_window
        self.context_length = context_length

    def propose(self, reqs: list[Req]) -> list[Draft]:
        """One draft per request (possibly empty)."""
        return [self._propose(req) for req in reqs]

    def _propose(self, req: Req) -> Draft:
        if has_penalties(req):
            return NO_DRAFT
        st: DraftState | None = req.draft_state
        if st is None:
            st = req.draft_state = DraftState(NgramIndex(self.min_window, self.max_window), self.max_tokens)
        if st.pause:
            st.pause -= 1
            return NO_DRAFT
        # The bonus token needs room too: at most remaining - 1 drafts, and the sequence stays in context.
        k = min(st.length, req.remaining_new_tokens - 1, self.context_length - req.seq_len - 1)
        if k <= 0:
            return NO_DRAFT
        seq = self._history(st, req)
        st.index.update(seq)
        tokens = st.index.lookup(seq, k)
        if not tokens:
            return NO_DRAFT
        if req.grammar is None:
            return Draft(tuple(tokens))
        return constrain(req, tokens)

    @staticmethod
    def _history(st: DraftState, req: Req) -> list[int]:
        """prompt + output, appended to incrementally (a jump-forward that replaced tokens rebuilds it)."""
        hist, n_prompt = st.history, len(req.prompt_ids)
        if not hist:
            hist.extend(req.prompt_ids)
        done = len(hist) - n_prompt
        out = req.output_ids
        if done > len(out) or (done and hist[-1] != out[done - 1]):
            del hist[n_prompt:]
            done = 0
        hist.extend(out[done:])
        return hist

    def observe(self, req: Req, drafted: int, accepted: int) -> None:
        """Adapt the request's draft length to a verify that accepted `accepted` of `drafted` drafts."""
        st: DraftState | None = req.draft_state
        if st is None or not drafted:
            return
        st.verify_passes += 1
        adapt_length(st, drafted, accepted, self.max_tokens)

    def forget(self, req: Req) -> None:
        """Nothing to free: a request's n-gram state lives on the request."""


def has_penalties(req: Req) -> bool:
    """Penalised requests are not drafted: their token counts would change between the rows of a pass."""
    p = req.params
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def adapt_length(st: Any, drafted: int, accepted: int, max_tokens: int) -> None:
    """A drafting state's (`length`, `pause`, `misses`) after a verify that accepted `accepted` of
    `drafted` drafts: longer by 2 after a full accept, shorter by 1 otherwise; nothing accepted pauses
    drafting for 1, 2, 4 .. 16 steps."""
    if accepted == drafted:
        st.length = min(max_tokens, st.length + GROWTH_ON_FULL_ACCEPT)
    else:
        st.length = max(1, st.length - 1)
    if accepted == 0:
        st.misses += 1
        st.pause = min(1 << (st.misses - 1), MAX_PAUSE_STEPS)
    else:
        st.misses = 0


def constrain(req: Req, tokens: list[int]) -> Draft:
    """The longest prefix of `tokens` the request's guide allows, with the state after each."""
    gs = req.grammar
    if gs.rejected:  # also set when a grammar limit was hit
        return NO_DRAFT
    guide, state = gs.guide, gs.state
    kept: list[int] = []
    states: list[Any] = []
    try:
        if guide.is_finished(state):
            return NO_DRAFT
        for token in tokens:
            if token in req.stop_token_ids:
                break
            state = guide.advance(state, token)
            if state is REJECTED:
                break
            kept.append(token)
            states.append(state)
            if guide.is_finished(state):
                break
    except GrammarError:  # a limit: draft what came before; decoding meets the error itself
        pass
    return Draft(tuple(kept), tuple(states)) if kept else NO_DRAFT
