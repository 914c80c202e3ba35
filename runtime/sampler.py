"""Batched, seeded token sampler with per-request parameter tables and grammar masks.

Each running request owns a *row* (0..max_requests-1, its request row) of small tables (temperature,
top-p, ...) filled once by `begin_request`; a step then only indexes those tables by the batch's `rows`
tensor, so nothing is rebuilt from Python objects per step and no Python loop runs over the vocabulary.

The engine drives a row's whole life through two calls per step. `prepare(batch)` ends the rows the
scheduler freed since the previous batch (`batch.released_rows`), claims a row for every request of an
extend batch that has none yet (its first chunk, or resumed after a retraction or a jump-forward) and
points constrained rows at their guide's current state (`ConstraintMasks`); `sample_batch(batch, logits)`
masks, samples and counts the batch's next tokens.

`sample` applies, in order: min-new-tokens blocking of stop tokens, repetition penalty (HF rule, over
prompt and output tokens), frequency/presence penalties (OpenAI rule, over output tokens), temperature,
top-k, top-p, min-p, then draws. Features are gated by counters of active rows that use them, so a step
where nobody uses top-k/top-p pays for no topk or sort, one where nobody uses penalties touches no
[R, V] table, and an all-greedy step is a single argmax. Top-k alone is a `topk` over the batch's largest
k; top-p looks at the best 256, then 4096 candidates, and fully sorts only the rows whose candidates
hold less than p of the mass. Tokens tied with the k-th best logit are kept.

Draws use the exponential race: token = argmax_i(p_i / E_i) with E_i ~ Exp(1) is an exact sample from
p. E_i = -log(U_i), where U_i is a counter-based hash of (request seed, num_generated, i) computed with
int64 tensor ops (32-bit multiply-xorshift, constants < 2^31 so products stay < 2^63). A request's draw
therefore depends only on its own seed, position and logits, never on the rest of the batch.

`sample` itself applies no grammar mask: `sample_batch` sets disallowed logits to -inf before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from loomlm.runtime.constrained import ConstraintMasks
from loomlm.runtime.forward_context import ForwardMode
from loomlm.runtime.sampling_params import SamplingParams

if TYPE_CHECKING:
    from loomlm.runtime.batch import ScheduledBatch
    from loomlm.runtime.request import Req

_MASK32 = 0xFFFFFFFF
_TOP_P_CANDIDATES = (256, 4096)  # topk sizes tried for top-p before a full sort
_FEATURES = ("sample", "top_k", "top_p", "min_p", "repetition", "freq_pres", "min_tokens")


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit mixer on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32  # < 2^32 * 2^31: no int64 overflow
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


@dataclass
class SampledTokens:
    """One step's sampling: the S requests that sampled, the logits they sampled from (grammar masks
    applied: output logprobs are taken from them) and the tokens."""

    reqs: list[Req]
    logits: torch.Tensor  # [S, V] float32 (a verify pass: [T, V], one row per fed token)
    tokens: torch.Tensor  # [S] int64, on the logits' device (a verify pass: [T])
    accepted: list[int] | None = None  # a verify pass: drafts accepted per request (of `reqs`)


class Sampler:
    """Samples one token per batch row from float32 logits, with per-request parameters by row."""

    def __init__(self, vocab_size: int, max_requests: int, device: torch.device | str = "cpu"):
        if vocab_size <= 0 or max_requests <= 0:
            raise ValueError(f"Sampler needs vocab_size > 0 and max_requests > 0, got {vocab_size} and {max_requests}")
        self.vocab_size = vocab_size
        self.max_requests = max_requests
        self.device = torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        i64 = dict(dtype=torch.int64, device=self.device)
        R = max_requests
        self.temperature = torch.ones(R, **f32)  # 0 = greedy (also set for top_k == 1)
        self.top_p = torch.ones(R, **f32)
        self.top_k = torch.full((R,), vocab_size, **i64)  # vocab_size = off
        self.min_p = torch.zeros(R, **f32)
        self.repetition_penalty = torch.ones(R, **f32)
        self.frequency_penalty = torch.zeros(R, **f32)
        self.presence_penalty = torch.zeros(R, **f32)
        self.min_new_tokens = torch.zeros(R, **i64)
        self.seed_hash = torch.zeros(R, **i64)  # _hash32(seed mod 2^32)
        self._vocab_hash = _hash32(torch.arange(vocab_size, **i64))  # [V]
        # [R, V] tables, allocated the first time a request needs them.
        self._output_counts: torch.Tensor | None = None  # int32 occurrences of each output token
        self._prompt_mask: torch.Tensor | None = None  # bool: token occurs in the prompt
        self._stop_mask: torch.Tensor | None = None  # bool: token ends the request (EOS, stop ids)
        self._row_features: list[frozenset[str] | None] = [None] * R  # None = row free
        self._num_using = dict.fromkeys(_FEATURES, 0)
        self.constraints = ConstraintMasks(vocab_size, max_requests, self.device)

    # ------------------------------------------------------------------ per-step row life
    def prepare(self, batch: ScheduledBatch) -> None:
        """Bring the rows in line with `batch` before its forward (see the module docstring)."""
        for row in batch.released_rows:
            if self.in_use(row):
                self.end_request(row)
            self.constraints.end(row)
        if batch.mode == ForwardMode.EXTEND:  # a decode batch only holds requests claimed at their extend
            for req in batch.reqs:
                if not self.in_use(req.row):
                    self.begin_request(
                        req.row, req.params, req.prompt_ids, req.seed, req.stop_token_ids, req.output_ids
                    )
                    if req.grammar is not None:
                        self.constraints.begin(req.row, req.grammar)
        if self.constraints.active:  # guides advanced (or jumped) since the rows' masks were set
            for req in batch.reqs:
                if req.grammar is not None:
                    self.constraints.update(req.row)

    def sample_batch(self, batch: ScheduledBatch, logits: torch.Tensor) -> SampledTokens:
        """The next token of each request of `batch` that samples this step; logits [N, V] are the
        batch's logits rows. Counts the tokens for the penalties."""
        if batch.is_verify:
            return self._sample_verify(batch, logits)
        reqs = batch.sampling_reqs
        logits = logits[batch.sample_rows]  # [S, V]
        rows = batch.req_rows[batch.sample_index]  # [S]
        if not reqs:  # prompt chunks only: nothing to sample
            return SampledTokens(reqs, logits, torch.zeros(0, dtype=torch.int64, device=logits.device))
        num_generated = torch.tensor([len(r.output_ids) for r in reqs], dtype=torch.int64)
        if self.constraints.active:
            logits = self.constraints.apply(logits, rows)
        tokens = self.sample(logits, rows, num_generated)
        self.record(rows, tokens)
        return SampledTokens(reqs, logits, tokens)

    def _sample_verify(self, batch: ScheduledBatch, logits: torch.Tensor) -> SampledTokens:
        """A verify pass (see runtime/speculative.py): every row [T] is sampled as the decode step at its
        position would be, and request b accepts its drafts while each equals the token sampled before it."""
        reqs = batch.reqs
        counts = batch.extend_lens  # [B] 1 + draft length
        B, T = len(reqs), int(counts.sum())
        seg = torch.repeat_interleave(torch.arange(B), counts)  # [T] request of each row
        offset = torch.arange(T) - batch.sample_rows[seg]  # [T] row within its request
        rows = batch.req_rows[seg]
        num_generated = torch.tensor([len(r.output_ids) for r in reqs], dtype=torch.int64)[seg] + offset
        usable = counts - 1  # drafts whose rows have masks
        if self.constraints.active:
            logits, usable = self._verify_masks(batch, logits, rows, usable)
        tokens = self.sample(logits, rows, num_generated)
        # Row j of a request is checked against its draft j + 1 (the next fed token); the first row that
        # differs, or its last usable row, ends its run: accepted = that row's offset.
        nxt = torch.cat([batch.input_ids[1:], batch.input_ids[:1]]).to(tokens.device)
        ends = (tokens != nxt).cpu() | (offset >= usable[seg])
        big = torch.full((B,), T, dtype=torch.int64)
        accepted = big.scatter_reduce(0, seg, torch.where(ends, offset, T), reduce="amin")
        taken = offset <= accepted[seg]  # the accepted drafts' rows and the one after them
        self.record(rows[taken], tokens[taken.to(tokens.device)])
        return SampledTokens(reqs, logits, tokens, accepted=accepted.tolist())

    def _verify_masks(
        self, batch: ScheduledBatch, logits: torch.Tensor, rows: torch.Tensor, usable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Grammar masks of a verify pass's rows: a request's first row at its guide's state, row j at the
        state after its first j drafts. A draft state whose mask cannot be computed makes the drafts from
        there on unusable (`usable` [B] is lowered)."""
        masks = self.constraints
        masks.unpin_drafts()
        arena_rows = masks.arena_row.take(rows.numpy())
        usable = usable.clone()
        for b, (req, draft) in enumerate(zip(batch.reqs, batch.drafts)):
            if req.grammar is None or not draft.states:
                continue
            found = masks.draft_rows(req.row, draft.states)
            first = int(batch.sample_rows[b]) + 1
            arena_rows[first : first + len(found)] = found
            usable[b] = min(int(usable[b]), len(found))
        return masks.apply_arena_rows(logits, arena_rows), usable

    def check_rows(self, holder_rows: Iterable[int], released_rows: Iterable[int]) -> None:
        """Integrity between steps: every holder's row is claimed, every claimed row is a holder's or
        was freed since the last batch, and the feature counters match the claimed rows."""
        used = {row for row, f in enumerate(self._row_features) if f is not None}
        holders = set(holder_rows)
        if not holders <= used or not used <= holders | set(released_rows):
            raise AssertionError(
                f"sampler rows in use {sorted(used)} disagree with the holders' rows "
                f"{sorted(holders)} and the released ones {sorted(set(released_rows))}"
            )
        counts = {name: sum(name in f for f in self._row_features if f is not None) for name in _FEATURES}
        if counts != self._num_using:
            raise AssertionError(f"sampler feature counters {self._num_using} disagree with the rows {counts}")

    # ------------------------------------------------------------------ per-request tables
    def begin_request(
        self,
        row: int,
        params: SamplingParams,
        prompt_ids: list[int] | torch.Tensor,
        seed: int,
        stop_token_ids: set[int],
        output_ids: Sequence[int] = (),
    ) -> None:
        """Claim `row` for a request: write its parameters, reset its counts, record its prompt.

        `output_ids` re-counts tokens generated before (a retracted request that is resumed), so that
        its penalties continue where they stopped.
        """
        self._check_row(row)
        if self._row_features[row] is not None:
            raise ValueError(f"sampler row {row} is already in use")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        V = self.vocab_size
        greedy = params.is_greedy
        top_k = V if params.top_k == -1 else min(params.top_k, V)
        stop_ids = sorted(i for i in stop_token_ids if 0 <= i < V)  # ids past the vocab never occur
        features = {
            "sample": not greedy,
            "top_k": not greedy and top_k < V,
            "top_p": not greedy and params.top_p < 1.0,
            "min_p": not greedy and params.min_p > 0.0,
            "repetition": params.repetition_penalty != 1.0,
            "freq_pres": params.frequency_penalty != 0.0 or params.presence_penalty != 0.0,
            "min_tokens": params.min_new_tokens > 0 and bool(stop_ids),
        }
        used = frozenset(name for name, on in features.items() if on)

        self.temperature[row] = 0.0 if greedy else params.temperature
        self.top_p[row] = params.top_p
        self.top_k[row] = top_k
        self.min_p[row] = params.min_p
        self.repetition_penalty[row] = params.repetition_penalty
        self.frequency_penalty[row] = params.frequency_penalty
        self.presence_penalty[row] = params.presence_penalty
        self.min_new_tokens[row] = params.min_new_tokens
        self.seed_hash[row] = int(_hash32(torch.tensor(seed & _MASK32, dtype=torch.int64)))

        if used & {"repetition", "freq_pres"} and self._output_counts is None:
            self._output_counts = torch.zeros(self.max_requests, V, dtype=torch.int32, device=self.device)
        if self._output_counts is not None:
            self._output_counts[row] = 0
            if len(output_ids):
                ids = torch.as_tensor(output_ids, dtype=torch.int64, device=self.device)
                self._output_counts[row].index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
        if "repetition" in used and self._prompt_mask is None:
            self._prompt_mask = torch.zeros(self.max_requests, V, dtype=torch.bool, device=self.device)
        if self._prompt_mask is not None:
            self._prompt_mask[row] = False
            if "repetition" in used:
                ids = torch.as_tensor(prompt_ids, dtype=torch.int64, device=self.device)
                self._prompt_mask[row, ids] = True
        if "min_tokens" in used and self._stop_mask is None:
            self._stop_mask = torch.zeros(self.max_requests, V, dtype=torch.bool, device=self.device)
        if self._stop_mask is not None:
            self._stop_mask[row] = False
            if stop_ids:
                self._stop_mask[row, torch.tensor(stop_ids, dtype=torch.int64, device=self.device)] = True

        self._row_features[row] = used
        for name in used:
            self._num_using[name] += 1

    def end_request(self, row: int) -> None:
        """Release `row`; its table entries are overwritten by the next `begin_request`."""
        self._check_row(row)
        used = self._row_features[row]
        if used is None:
            raise ValueError(f"sampler row {row} is not in use")
        for name in used:
            self._num_using[name] -= 1
        self._row_features[row] = None

    def record(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Count generated `tokens` [B] for `rows` [B] (needed by the penalties)."""
        if self._output_counts is None:
            return
        rows, tokens = rows.to(self.device), tokens.to(self.device)
        ones = torch.ones(rows.shape, dtype=torch.int32, device=self.device)
        self._output_counts.index_put_((rows, tokens), ones, accumulate=True)

    def in_use(self, row: int) -> bool:
        return 0 <= row < self.max_requests and self._row_features[row] is not None

    def num_active(self) -> int:
        return sum(f is not None for f in self._row_features)

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.max_requests:
            raise ValueError(f"sampler row must be in [0, {self.max_requests}), got {row!r}")

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def sample(self, logits: torch.Tensor, rows: torch.Tensor, num_generated: torch.Tensor) -> torch.Tensor:
        """Return one token id per row: logits [B, V] float32, rows [B] int64, num_generated [B] int64.

        `num_generated[b]` counts the tokens row b generated so far: it drives min-new-tokens blocking
        and keys the random draw. `logits` is not modified. A row whose logits are all -inf is invalid.
        """
        if logits.shape[0] == 0:  # the top-k / top-p paths reduce over the batch
            return torch.zeros(0, dtype=torch.int64, device=logits.device)
        use = self._num_using
        logits = logits.float()
        rows, num_generated = rows.to(self.device), num_generated.to(self.device)
        inf = float("inf")

        if use["min_tokens"]:
            assert self._stop_mask is not None
            blocked = num_generated < self.min_new_tokens[rows]  # [B]
            logits = logits.masked_fill(self._stop_mask[rows] & blocked[:, None], -inf)

        if use["repetition"] or use["freq_pres"]:
            assert self._output_counts is not None
            counts = self._output_counts[rows]  # [B, V] int32
            if use["repetition"]:
                assert self._prompt_mask is not None
                seen = self._prompt_mask[rows] | (counts > 0)
                pen = self.repetition_penalty[rows][:, None]
                penalised = torch.where(logits > 0, logits / pen, logits * pen)
                logits = torch.where(seen, penalised, logits)
            if use["freq_pres"]:
                counts_f = counts.float()
                logits = (
                    logits
                    - self.frequency_penalty[rows][:, None] * counts_f
                    - self.presence_penalty[rows][:, None] * (counts_f > 0)
                )

        greedy_tokens = logits.argmax(dim=-1)
        if not use["sample"]:
            return greedy_tokens

        temperature = self.temperature[rows]
        greedy = temperature == 0
        logits = logits / torch.where(greedy, 1.0, temperature)[:, None]
        if use["top_p"]:
            logits = self._top_k_top_p(logits, rows)
        elif use["top_k"]:
            logits = self._top_k(logits, rows)
        if use["min_p"]:
            # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p); min_p = 0 keeps all.
            floor = logits.amax(dim=-1, keepdim=True) + self.min_p[rows][:, None].log()
            logits = logits.masked_fill(logits < floor, -inf)

        # argmax(p / E) with p unnormalised: dividing every p_i by the row's sum changes no argmax.
        weights = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
        sampled = weights.div_(self._exponentials(rows, num_generated)).argmax(dim=-1)
        return torch.where(greedy, greedy_tokens, sampled)

    def _top_k(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Keep logits >= the row's k-th largest (ties with it are kept); topk over max k, no sort."""
        V = logits.shape[-1]
        k = self.top_k[rows]
        k_on = torch.where(k < V, k, 0)
        k_max = int(k_on.max())
        if k_max == 0:
            return logits
        top_values = logits.topk(k_max, dim=-1).values  # [B, k_max]
        kth = top_values.gather(-1, (k_on - 1).clamp(min=0)[:, None])  # [B, 1]
        kth = torch.where((k_on > 0)[:, None], kth, -float("inf"))
        return logits.masked_fill(logits < kth, -float("inf"))

    def _top_k_top_p(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Top-k then top-p (smallest set of mass >= p), on the best candidates instead of a full sort.

        The few hundred largest logits usually hold the top-p set: rows are filtered on a `topk` of
        growing size (`_TOP_P_CANDIDATES`, at least the batch's largest k), and only the rows whose
        candidates still hold less than p of the mass get a full sort. Every size computes the same
        prefix sums, so a row's result does not depend on the size its batch neighbours needed.
        """
        B, V = logits.shape
        k = self.top_k[rows]
        k_on = k < V
        top_p = self.top_p[rows]
        k_max = int(torch.where(k_on, k, 0).max())
        sizes = sorted({max(n, k_max) for n in _TOP_P_CANDIDATES if max(n, k_max) < V}) + [V]
        lse = logits.logsumexp(dim=-1, keepdim=True)
        out = torch.full_like(logits, -float("inf"))
        todo = torch.arange(B, device=logits.device)  # rows left
        for n in sizes:
            part = logits if len(todo) == B else logits[todo]
            values, order = part.topk(n, dim=-1) if n < V else part.sort(dim=-1, descending=True)
            values, done = _filter_sorted(values, k[todo], k_on[todo], top_p[todo], lse[todo])
            if n == V:
                done = torch.ones_like(done)
            out[todo[done][:, None], order[done]] = values[done]
            todo = todo[~done]
            if len(todo) == 0:
                break
        touched = (k_on | (top_p < 1.0))[:, None]
        return torch.where(touched, out, logits)

    def _exponentials(self, rows: torch.Tensor, num_generated: torch.Tensor) -> torch.Tensor:
        """Exp(1) variates [B, V], a pure function of (row seed, num_generated, token id)."""
        step_key = _hash32(self.seed_hash[rows] ^ (num_generated & _MASK32))  # [B]
        bits = _hash32(self._vocab_hash[None, :] ^ step_key[:, None])  # [B, V]
        # The top 23 bits give U = (k + 0.5) / 2^23 in (0, 1), exact in float32 (24 significant bits),
        # so -log(U) is finite and > 0. (With 24 bits the largest k rounds to U = 1.0, E = 0, and a
        # masked-out token's 0 / 0 = NaN would win the argmax.)
        uniform = ((bits >> 9).float() + 0.5) * (1.0 / (1 << 23))
        return uniform.log_().neg_()


def _filter_sorted(
    values: torch.Tensor, k: torch.Tensor, k_on: torch.Tensor, top_p: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply top-k and top-p to the leading part of each row sorted descending.

    values [b, n] (the n largest logits of rows of length V >= n), k/k_on/top_p [b], lse [b, 1] the
    row's full logsumexp. Returns the filtered values and whether each row's result is exact, i.e.
    top-k holds the row to the first n, or the first n already hold mass >= top_p.
    """
    inf = float("inf")
    n = values.shape[-1]
    kth = values.gather(-1, (k.clamp(max=n) - 1)[:, None])  # [b, 1]
    values = values.masked_fill(k_on[:, None] & (values < kth), -inf)  # ties with the k-th stay
    # Top-p renormalises over what top-k kept (all within the n when k is on), else the whole row.
    lse = torch.where(k_on[:, None], values.logsumexp(dim=-1, keepdim=True), lse)
    probs = (values - lse).exp()
    cum = probs.cumsum(dim=-1)
    p = top_p[:, None]
    # Mass strictly before a token >= p: the set before it already reaches p. The best token always
    # survives (mass 0 before it); p == 1 rows are left alone, whatever the rounding of the sums.
    values = values.masked_fill((cum - probs >= p) & (p < 1.0), -inf)
    covered = k_on | (top_p >= 1.0) | (cum[:, -1] >= top_p)
    return values, covered
