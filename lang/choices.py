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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

Logprobs = Sequence[Sequence[Any]]   # [(logprob, token_id, text), ...] of one choice


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

    def __call__(self, choices: Sequence[str], input_token_logprobs: Sequence[Logprobs],
                 unconditional_token_logprobs: Sequence[Logprobs] | None = None) -> ChoicesDecision:
        normalized = [mean_logprob(lp) for lp in input_token_logprobs]
        index, extra = self.pick(normalized, input_token_logprobs, unconditional_token_logprobs)
        meta = {"normalized_prompt_logprobs": normalized,
                "input_token_logprobs": [list(lp) for lp in input_token_logprobs], **extra}
        return ChoicesDecision(choices[index], index, meta)

    def pick(self, normalized: list[float], logprobs: Sequence[Logprobs],
             unconditional: Sequence[Logprobs] | None) -> tuple[int, dict[str, Any]]:
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
        return _argmax_first(scores), {"unconditional_token_logprobs": [list(u) for u in unconditional],
                                       "normalized_unconditional_prompt_logprobs": scores}


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
