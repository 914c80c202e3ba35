"""How `select` picks a choice from per-token logprobs: SGLang's three choices methods.

Every method gets, per choice, the logprobs of the choice's own tokens given the prompt
(`input_token_logprobs[i] = [(logprob, token_id, text), ...]`), and `normalized_prompt_logprobs[i]` (their
mean). The definitions:

- `token_length_normalized` (default): argmax of the mean token logprob.
- `greedy_token_selection`: argmax of the first token's logprob; ties go to the next token, and so on.
  A shorter choice is padded with its own mean logprob to the longest choice's length.
- `unconditional_likelihood_normalized`: argmax of mean(logprob given the prompt - logprob given no
  prompt), per token; the unconditional first token has no logprob and counts as 0.

Ties resolve to the earliest choice. Each decision's meta info holds the scores it compared.

`score_select` is the one scoring algorithm the backends share (each supplies how to prefill and how to
get input-token logprobs: in process, or over HTTP): the prompt is prefilled once, then every
`prompt + choice` is scored in one batched call, so each computes only the tokens after the cached
prompt. A choice's tokens are those where the tokenization of `prompt + choice` departs from the
prompt's own, so a choice that merges with the prompt's last characters is scored over the merged
token too (SGLang's "token healing" case).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Logprobs = Sequence[Sequence[Any]]  # [(logprob, token_id, text), ...] of one choice
# score(id_lists, start) -> per list, (input-token logprob entries of positions start.., meta info)
ScoreFn = Callable[[list[list[int]], int], list[tuple[list, dict[str, Any]]]]


@dataclass(frozen=True)
class ChoicesDecision:
    decision: str
    index: int
    meta_info: dict[str, Any]


def _values(entries: Logprobs) -> list[float]:
    return [e[0] for e in entries]


def mean_logprob(entries: Logprobs) -> float:
    values = [v for v in _values(entries) if v is not None]
    return sum(values) / len(values) if values else 0.0


def _argmax_first(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


class ChoicesMethod:
    """Picks a choice; `needs_unconditional` asks the backend for logprobs of the choices alone too."""

    needs_unconditional = False
    name = "choices_method"

    def __call__(
        self,
        choices: Sequence[str],
        input_token_logprobs: Sequence[Logprobs],
        unconditional_token_logprobs: Sequence[Logprobs] | None = None,
    ) -> ChoicesDecision:
        normalized = [mean_logprob(lp) for lp in input_token_logprobs]
        index, extra = self.pick(normalized, input_token_logprobs, unconditional_token_logprobs)
        meta = {
            "normalized_prompt_logprobs": normalized,
            "input_token_logprobs": [list(lp) for lp in input_token_logprobs],
            **extra,
        }
        return ChoicesDecision(choices[index], index, meta)

    def pick(
        self, normalized: list[float], logprobs: Sequence[Logprobs], unconditional: Sequence[Logprobs] | None
    ) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class TokenLengthNormalized(ChoicesMethod):
    name = "token_length_normalized"

    def pick(self, normalized, logprobs, unconditional):
        return _argmax_first(normalized), {}


class GreedyTokenSelection(ChoicesMethod):
    name = "greedy_token_selection"

    def pick(self, normalized, logprobs, unconditional):
        width = max(len(lp) for lp in logprobs)
        matrix = [_values(lp) + [normalized[i]] * (width - len(lp)) for i, lp in enumerate(logprobs)]
        alive = list(range(len(matrix)))
        for col in range(width):
            best = max(matrix[i][col] for i in alive)
            alive = [i for i in alive if matrix[i][col] == best]
            if len(alive) == 1:
                break
        return alive[0], {"greedy_logprob_matrix": matrix}


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    name = "unconditional_likelihood_normalized"
    needs_unconditional = True

    def pick(self, normalized, logprobs, unconditional):
        if unconditional is None:
            raise ValueError("unconditional_likelihood_normalized needs the choices' unconditional logprobs")
        scores = []
        for cond, uncond in zip(logprobs, unconditional):
            c, u = _values(cond), _values(uncond)
            if len(c) != len(u):
                raise ValueError(f"a choice has {len(c)} conditional but {len(u)} unconditional token logprobs")
            u = [0.0 if v is None else v for v in u]
            scores.append(sum(a - b for a, b in zip(c, u)) / len(c))
        return _argmax_first(scores), {
            "unconditional_token_logprobs": [list(u) for u in unconditional],
            "normalized_unconditional_prompt_logprobs": scores,
        }


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def check_select_args(prompt: str, choices: Sequence[str]) -> None:
    if not choices or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"select needs a non-empty list of strings, got {choices!r}")
    if not prompt:
        raise ValueError("select needs a non-empty prompt: a choice's first token has no logprob without context")


def score_select(
    prompt_ids: list[int],
    full: list[list[int]],
    choices: Sequence[str],
    method: ChoicesMethod,
    score: ScoreFn,
    prefill: Callable[[list[int]], None],
) -> ChoicesDecision:
    """Pick among `choices` given the token ids of the prompt and of each `prompt + choice` (see the
    module docstring); `prefill(prompt_ids)` caches the prompt first."""
    if not prompt_ids:
        raise ValueError("select needs a non-empty prompt: a choice's first token has no logprob without context")
    prefill(prompt_ids)
    starts = [max(common_prefix_len(prompt_ids, ids), 1) for ids in full]
    for choice, ids, start in zip(choices, full, starts):
        if start >= len(ids):
            raise ValueError(f"select choice {choice!r} adds no token to the prompt")
    first = min(starts)
    outs = score(full, first)
    scored = [entries[start - first :] for (entries, _meta), start in zip(outs, starts)]
    return decide(choices, method, scored, len(prompt_ids), [meta for _, meta in outs], score)


def decide(
    choices: Sequence[str],
    method: ChoicesMethod,
    scored: list[list],
    prompt_tokens: int,
    metas: list[dict[str, Any]],
    score: ScoreFn,
) -> ChoicesDecision:
    """Let `method` pick from each choice's scored token logprobs (scoring the choices' tokens alone too
    when the method needs that), and add SGLang's meta info of a select."""
    unconditional = None
    if method.needs_unconditional:
        alone = [[e[1] for e in entries] for entries in scored]
        unconditional = [entries for entries, _meta in score(alone, 0)]
    decision = method(list(choices), scored, unconditional)
    decision.meta_info.update(
        prompt_tokens=prompt_tokens,
        output_token_logprobs=[[] for _ in choices],
        choice_prompt_tokens=[m["prompt_tokens"] for m in metas],
        cached_tokens=[m.get("cached_tokens") for m in metas],
    )
    return decision
