"""Speculative decoding with a small draft model (SGLang's `STANDALONE`): `speculative_draft_model_path`.

The draft model runs beside the target in the same process, on its own KV pool (`ModelRunner` with the
target's dtype, device and slot count; no radix cache, no tensor parallelism). At each decode step,
`DraftModelDrafter.propose` catches every request up: one extend pass feeds the draft model the request's
tokens it has not seen (at least the target's newest token), its logits give draft 1, and one decode pass
per further draft feeds the previous draft back (greedy: argmax of the draft's logits). The drafts then
go through the same verify pass as n-gram drafts (`runtime/speculative.py`): a draft is accepted while it
equals the token the target samples at its position, so outputs, greedy or seeded, are the ones
speculation off gives.

Per request the drafter keeps the draft model's row and the tokens whose K/V it computed (`fed`). The
next catch-up keeps the longest prefix of `fed` that is still the request's sequence (the accepted
drafts) and frees the K/V slots after it (rejected drafts). The draft length adapts as for n-grams. A
request that finishes or is retracted drops its state (`forget`); one absent from a proposal (waiting,
say) drops it too, so nothing is held for a request the scheduler is not running.

Not drafted for: requests with penalties, constrained requests past the first draft their guide rejects
(as for n-grams), and steps where the draft pool has no room.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from loomlm.runtime.config import EngineConfig
from loomlm.runtime.forward_context import ForwardBatch, ForwardMode
from loomlm.runtime.model_runner import ModelRunner
from loomlm.runtime.request import Req
from loomlm.runtime.speculative import NO_DRAFT, Draft, adapt_length, constrain, has_penalties


@dataclass
class DraftModelState:
    row: int  # the draft model's req_to_token row
    fed: list[int] = field(default_factory=list)  # tokens whose K/V the draft model holds, in order
    # fed[:confirmed] are the request's own tokens (fed by a catch-up), the rest drafts. A sampled token
    # is final once processed (a jump-forward replaces only the token of its own step), so only the
    # drafts need comparing with the sequence: a step costs the new tokens, not the whole sequence.
    confirmed: int = 0
    length: int = 1  # draft length to try next
    pause: int = 0
    misses: int = 0
    verify_passes: int = 0


def _tokens(req: Req, start: int, end: int) -> list[int]:
    """The request's tokens [start, end) of prompt + output, without building the whole sequence."""
    n = len(req.prompt_ids)
    if start >= n:
        return req.output_ids[start - n : end - n]
    return req.prompt_ids[start:end] + req.output_ids[: max(0, end - n)]


class DraftModelDrafter:
    def __init__(self, target: EngineConfig, target_runner: Any):
        """`target_runner`: the target's ModelRunner (dtype, KV slot count, context length, vocabulary)."""
        path = target.speculative_draft_model_path
        draft_config = dataclasses.replace(
            target,
            model_path=path,
            dtype=str(target_runner.dtype).removeprefix("torch."),
            max_total_tokens=target_runner.kv_pool.num_slots,
            speculative_algorithm=None,
            speculative_draft_model_path=None,
            tp_size=1,
            quantization=None,
            random_seed=target.random_seed + 1,  # dummy draft weights differ from dummy target weights
        )
        try:
            self.runner = ModelRunner(draft_config)
        except (ValueError, OSError) as exc:  # no such file, a format or config it cannot read
            raise ValueError(f"speculative_draft_model_path: {exc}") from None
        if self.runner.vocab_size != target_runner.vocab_size:
            self.runner.close()
            raise ValueError(
                f"the draft model's vocabulary ({self.runner.vocab_size} tokens) differs from the target's "
                f"({target_runner.vocab_size}): speculative_draft_model_path must use the target's tokenizer"
            )
        self.max_tokens = target.speculative_num_draft_tokens
        self.context_length = min(target_runner.context_length, self.runner.context_length)
        self.states: dict[str, DraftModelState] = {}

    # ---- state ---------------------------------------------------------------------------------
    def forget(self, req: Req) -> None:
        """Free what the draft model holds for `req` (it finished, or left the running set)."""
        st = self.states.pop(req.rid, None)
        if st is not None:
            self._truncate(st, 0)
            self.runner.req_pool.free(st.row)

    def _truncate(self, st: DraftModelState, keep: int) -> None:
        st.confirmed = min(st.confirmed, keep)
        if len(st.fed) > keep:
            slots = self.runner.req_pool.req_to_token[st.row, keep : len(st.fed)].to(torch.int64)
            self.runner.kv_pool.free(slots)
            del st.fed[keep:]

    def held_slots(self) -> int:
        return sum(len(st.fed) for st in self.states.values())

    def check_request(self, req: Req) -> None:
        """The draft model's confirmed tokens for `req` are the request's own (tests, after a proposal)."""
        st = self.states.get(req.rid)
        if st is not None:
            assert st.fed[: st.confirmed] == _tokens(req, 0, st.confirmed), f"{req.rid}: stale draft K/V"

    def check_integrity(self) -> None:
        kv = self.runner.kv_pool
        kv.check_integrity()
        self.runner.req_pool.check_integrity()
        assert kv.used() == self.held_slots(), (kv.used(), self.held_slots())
        assert self.runner.req_pool.max_requests - self.runner.req_pool.available() == len(self.states)

    # ---- proposing ----------------------------------------------------------------------------
    def propose(self, reqs: list[Req]) -> list[Draft]:
        running = {r.rid for r in reqs}
        for rid in [rid for rid in self.states if rid not in running]:
            st = self.states.pop(rid)
            self._truncate(st, 0)
            self.runner.req_pool.free(st.row)
        wanted = [self._wanted(req) for req in reqs]
        active = [i for i, k in enumerate(wanted) if k > 0]
        if not active:
            return [NO_DRAFT] * len(reqs)
        tokens = self._draft([reqs[i] for i in active], [wanted[i] for i in active])
        drafts = [NO_DRAFT] * len(reqs)
        for i, toks in zip(active, tokens):
            req = reqs[i]
            drafts[i] = (Draft(tuple(toks)) if req.grammar is None else constrain(req, toks)) if toks else NO_DRAFT
        return drafts

    def _wanted(self, req: Req) -> int:
        """Drafts to make for `req` this step (0: none)."""
        if has_penalties(req):
            return 0
        st = self.states.get(req.rid)
        if st is None:
            if self.runner.req_pool.available() == 0:
                return 0
            st = self.states[req.rid] = DraftModelState(self.runner.req_pool.alloc(), length=self.max_tokens)
            if req.draft_state is None:  # the counts (spec_verify_ct) survive a dropped state
                req.draft_state = st
        if st.pause:
            st.pause -= 1
            return 0
        return max(0, min(st.length, req.remaining_new_tokens - 1, self.context_length - req.seq_len - 1))

    def _draft(self, reqs: list[Req], ks: list[int]) -> list[list[int]]:
        """Catch the draft model up on each request, then draft ks[i] tokens for it (none at all when
        the draft pool is out of room). A forward that fails leaves K/V nobody can trust: the requests'
        states are dropped before the error goes on."""
        try:
            return self._catch_up_and_draft(reqs, ks)
        except BaseException:
            for req in reqs:
                self.forget(req)
            raise

    def _catch_up_and_draft(self, reqs: list[Req], ks: list[int]) -> list[list[int]]:
        states = [self.states[r.rid] for r in reqs]
        lens = [len(r.prompt_ids) + len(r.output_ids) for r in reqs]
        for req, st, n in zip(reqs, states, lens):  # keep the drafts that became the sequence
            keep = st.confirmed
            limit = min(len(st.fed), n - 1)  # the newest token was never fed
            if keep < limit:
                actual = _tokens(req, keep, limit)
                while keep < limit and st.fed[keep] == actual[keep - st.confirmed]:
                    keep += 1
            self._truncate(st, keep)
        need = sum(n - len(st.fed) for st, n in zip(states, lens)) + sum(ks)
        if need > self.runner.kv_pool.available():
            return [[] for _ in reqs]
        new = [_tokens(req, len(st.fed), n) for req, st, n in zip(reqs, states, lens)]
        logits = self._forward(states, new, ForwardMode.EXTEND)
        for st in states:
            st.confirmed = len(st.fed)
        drafts = [[t] for t in logits.argmax(dim=-1).tolist()]
        for step in range(1, max(ks)):
            live = [i for i, k in enumerate(ks) if k > step]
            if not live:
                break
            logits = self._forward([states[i] for i in live], [[drafts[i][-1]] for i in live], ForwardMode.DECODE)
            for i, t in zip(live, logits.argmax(dim=-1).tolist()):
                drafts[i].append(t)
        return drafts

    def _forward(self, states: list[DraftModelState], new: list[list[int]], mode: ForwardMode) -> torch.Tensor:
        """Feed new[i] to request i's row; returns the logits of each request's last new token [B, V]."""
        runner = self.runner
        lens = [len(n) for n in new]
        prefix = [len(st.fed) for st in states]
        slots = runner.kv_pool.alloc(sum(lens))
        rows = torch.tensor([st.row for st in states], dtype=torch.int64)
        positions = []
        offset = 0
        for st, toks, start, n in zip(states, new, prefix, lens):
            runner.req_pool.req_to_token[st.row, start : start + n] = slots[offset : offset + n].to(torch.int32)
            positions.extend(range(start, start + n))
            st.fed.extend(toks)
            offset += n
        ends = torch.cumsum(torch.tensor(lens, dtype=torch.int64), 0) - 1
        batch = ForwardBatch(
            mode=mode,
            input_ids=torch.tensor([t for toks in new for t in toks], dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            out_slots=slots,
            req_rows=rows,
            prefix_lens=torch.tensor(prefix, dtype=torch.int64),
            extend_lens=torch.tensor(lens, dtype=torch.int64),
            logits_indices=ends,
        )
        return runner.forward_local(batch)

    def observe(self, req: Req, drafted: int, accepted: int) -> None:
        st = self.states.get(req.rid)
        if st is not None and drafted:
            adapt_length(st, drafted, accepted, self.max_tokens)
        if drafted and req.draft_state is not None:
            req.draft_state.verify_passes += 1
