"""Logprobs of output and prompt tokens: the math (`compute_logprobs`) and the per-request bookkeeping.

Output logprobs are taken from the logits a token was sampled from (grammar masks applied, penalties
and temperature not), as SGLang reports them. Prompt ("input") logprobs come from the extend rows the
batch kept for them (`ScheduledBatch.logprob_spans`): row p scores prompt token p + 1, so position 0
has none (SGLang reports None) and `Req.scored_upto` is the next position still owed.
"""

from __future__ import annotations

import torch

from loomlm.runtime.batch import ScheduledBatch
from loomlm.runtime.request import Req


def compute_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities from raw logits [B, V]: of `token_ids` [B], and the `top_k` best per row.

    Returns (token_logprobs [B], top_values [B, k], top_ids [B, k]); k = min(top_k, V), 0 allowed.
    """
    if top_k < 0:
        raise ValueError(f"top_k for logprobs must be >= 0, got {top_k}")
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    token_logprobs = logprobs.gather(-1, token_ids.long()[:, None]).squeeze(-1)
    k = min(top_k, logprobs.shape[-1])
    top_values, top_ids = (
        logprobs.topk(k, dim=-1)
        if k > 0
        else (
            logprobs.new_empty(logprobs.shape[0], 0),
            torch.empty(logprobs.shape[0], 0, dtype=torch.int64, device=logprobs.device),
        )
    )
    return token_logprobs, top_values, top_ids


def init_input_logprobs(req: Req) -> None:
    """Decide which prompt positions owe a logprob (before the request is first scheduled)."""
    opts = req.logprobs
    if not opts.return_logprob or opts.logprob_start_len < 0:
        req.scored_upto = len(req.prompt_ids)
        return
    req.scored_upto = max(opts.logprob_start_len, 1)
    if opts.logprob_start_len == 0:  # the first token has no logprob; SGLang reports None
        req.input_token_logprobs.append((None, req.prompt_ids[0], None))
        if opts.top_logprobs_num:
            req.input_top_logprobs.append([])


def record_input_logprobs(batch: ScheduledBatch, logits: torch.Tensor) -> None:
    """Append the prompt logprobs an extend batch computed: logits [N, V], the batch's logits rows."""
    for req, span in zip(batch.reqs, batch.logprob_spans):
        if not span.count:
            continue
        end = span.first_target + span.count
        targets = req.prompt_ids[span.first_target : end]
        k = req.logprobs.top_logprobs_num
        lp, tv, ti = compute_logprobs(
            logits[span.first_row : span.first_row + span.count],
            torch.tensor(targets, dtype=torch.int64, device=logits.device),
            k,
        )
        req.input_token_logprobs += [(v, t, None) for v, t in zip(lp.tolist(), targets)]
        if k:
            req.input_top_logprobs += [list(zip(vals, ids, [None] * k)) for vals, ids in zip(tv.tolist(), ti.tolist())]
        req.scored_upto = end


class OutputLogprobs:
    """The logprobs of one step's sampled tokens, as host lists (computed only when a request asks)."""

    def __init__(self, sampling: list[Req], logits: torch.Tensor, tokens: torch.Tensor):
        """sampling: the S requests that sampled; logits [S, V] they sampled from; tokens [S]."""
        wanted = [r.logprobs.top_logprobs_num for r in sampling if r.logprobs.return_logprob]
        self.any = bool(wanted)
        if self.any:
            lp, top_vals, top_ids = compute_logprobs(logits, tokens, max(wanted))
            self._lp, self._top_vals, self._top_ids = lp.tolist(), top_vals.tolist(), top_ids.tolist()

    def record(self, req: Req, i: int, token: int) -> None:
        """Append sampling row i's logprob (and top-k) to `req`, if it asked for them."""
        if not self.any or not req.logprobs.return_logprob:
            return
        req.output_token_logprobs.append((self._lp[i], token, None))
        k = req.logprobs.top_logprobs_num
        if k:
            req.output_top_logprobs.append(list(zip(self._top_vals[i][:k], self._top_ids[i][:k], [None] * k)))
