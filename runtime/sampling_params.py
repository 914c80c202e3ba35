"""Per-request sampling parameters: the one definition every layer derives from.

Names and meanings follow SGLang's `sampling_params` (so the HTTP protocol can pass them through):

- `max_new_tokens` (>= 0), `min_new_tokens` (0 <= min <= max): EOS and stop tokens are blocked until
  `min_new_tokens` tokens were generated.
- `temperature` (>= 0; 0 means greedy), `top_k` (-1 = off, else >= 1; 0 is rejected as in SGLang),
  `top_p` in (0, 1], `min_p` in [0, 1].
- `frequency_penalty`, `presence_penalty` in [-2, 2] (OpenAI rule, over output tokens) and
  `repetition_penalty` > 0 (HF rule, over prompt and output tokens; 1 = off).
- `stop`: None, one string or a list of strings, normalised to a tuple of non-empty strings;
  `stop_token_ids`: normalised to a tuple of non-negative ints; `ignore_eos` keeps generating past EOS.
- `skip_special_tokens` for detokenisation, `seed` (any int, or None for a fresh random draw), `n` >= 1.
- Structured output, at most one of: `regex` (the whole output matches it), `json_schema` (a JSON
  string, dict or pydantic model class; kept as JSON text), `choices` (the output is exactly one of
  these strings; kept as a tuple), `ebnf` (a lark-dialect grammar; `grammar` is accepted as its alias
  in `from_dict`), `structural_tag` (free text with schema-constrained tagged sections, SGLang's
  format; a JSON string or dict, kept as JSON text). Their grammars are compiled by the engine.

Every invalid value raises `ValueError` naming the field and the value. Booleans are not accepted where a
number is expected, nor are NaN or infinities.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _check_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"sampling parameter {name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"sampling parameter {name} must be >= {minimum}, got {value!r}")
    return value


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"sampling parameter {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"sampling parameter {name} must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class SamplingParams:
    """Validated, immutable sampling parameters of one request (see the module docstring)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # Accepts None, a str or a list of str; always a tuple after construction.
    stop: tuple[str, ...] = ()
    # Accepts any iterable of ints; always a tuple after construction.
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    seed: int | None = None
    n: int = 1
    regex: str | None = None
    # Accepts a JSON string, a dict/bool, or a pydantic model class; always JSON text after construction.
    json_schema: str | None = None
    # Accepts a list of str; always a tuple after construction.
    choices: tuple[str, ...] | None = None
    ebnf: str | None = None
    # Accepts a JSON string or a dict; always JSON text after construction.
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)

        _check_int("max_new_tokens", self.max_new_tokens, 0)
        _check_int("min_new_tokens", self.min_new_tokens, 0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"sampling parameter min_new_tokens must be <= max_new_tokens "
                f"({self.max_new_tokens}), got {self.min_new_tokens!r}"
            )

        for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"):
            set_(name, _check_float(name, getattr(self, name)))
        if self.temperature < 0:
            raise ValueError(f"sampling parameter temperature must be >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling parameter top_p must be in (0, 1], got {self.top_p!r}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"sampling parameter min_p must be in [0, 1], got {self.min_p!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"sampling parameter {name} must be in [-2, 2], got {getattr(self, name)!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"sampling parameter repetition_penalty must be > 0, got {self.repetition_penalty!r}")

        _check_int("top_k", self.top_k)
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"sampling parameter top_k must be -1 (off) or >= 1, got {self.top_k!r}")

        set_("stop", self._normalise_stop(self.stop))
        set_("stop_token_ids", self._normalise_stop_token_ids(self.stop_token_ids))

        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"sampling parameter {name} must be a bool, got {getattr(self, name)!r}")
        if self.seed is not None:
            _check_int("seed", self.seed)
        _check_int("n", self.n, 1)
        self._check_constraint(set_)

    def _check_constraint(self, set_: Any) -> None:
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError(f"sampling parameter regex must be a string, got {self.regex!r}")
        if self.json_schema is not None:
            from loomlm.grammars import canonical_json_schema

            set_("json_schema", canonical_json_schema(self.json_schema))
        if self.choices is not None:
            if (
                isinstance(self.choices, str)
                or not isinstance(self.choices, (list, tuple))
                or not self.choices
                or not all(isinstance(c, str) for c in self.choices)
            ):
                raise ValueError(
                    f"sampling parameter choices must be a non-empty list of strings, got {self.choices!r}"
                )
            set_("choices", tuple(self.choices))
        if self.ebnf is not None and (not isinstance(self.ebnf, str) or not self.ebnf.strip()):
            raise ValueError(f"sampling parameter ebnf must be a non-empty grammar string, got {self.ebnf!r}")
        if self.structural_tag is not None:
            set_("structural_tag", _structural_tag_text(self.structural_tag))
        from loomlm.grammars import CONSTRAINT_PARAMS

        given = [name for name in CONSTRAINT_PARAMS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"sampling parameters {' and '.join(given)} cannot be combined: give at most one")

    @property
    def constrained(self) -> bool:
        from loomlm.grammars import CONSTRAINT_PARAMS

        return any(getattr(self, name) is not None for name in CONSTRAINT_PARAMS)

    @staticmethod
    def _normalise_stop(stop: Any) -> tuple[str, ...]:
        if stop is None:
            return ()
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)):
            raise ValueError(f"sampling parameter stop must be None, a str or a list of str, got {stop!r}")
        for s in stop:
            if not isinstance(s, str) or s == "":
                raise ValueError(f"sampling parameter stop must hold non-empty strings, got {s!r}")
        return tuple(stop)

    @staticmethod
    def _normalise_stop_token_ids(ids: Any) -> tuple[int, ...]:
        if ids is None:
            return ()
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise ValueError(f"sampling parameter stop_token_ids must be a list of ints, got {ids!r}")
        ids = tuple(ids)
        for i in ids:
            _check_int("stop_token_ids", i, 0)
        return ids

    @property
    def is_greedy(self) -> bool:
        """True when the outcome is the argmax of the (penalised) logits: temperature 0 or top_k 1."""
        return self.temperature == 0.0 or self.top_k == 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | SamplingParams | None) -> SamplingParams:
        """Build from a JSON-style dict (None -> defaults); unknown keys raise `ValueError`."""
        if d is None:
            return cls()
        if isinstance(d, SamplingParams):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"sampling parameters must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        if "grammar" in d:  # SGLang's and vLLM's alias of ebnf
            if d.get("ebnf") is not None:
                raise ValueError("sampling parameters grammar and ebnf are aliases: give one")
            d = {("ebnf" if k == "grammar" else k): v for k, v in d.items()}
        for key in d:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown sampling parameter {key!r}{hint}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for the tuple fields) that `from_dict` turns back into an equal object."""
        out = dataclasses.asdict(self)
        out["stop"] = list(self.stop)
        out["stop_token_ids"] = list(self.stop_token_ids)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out


def _structural_tag_text(value: Any) -> str:
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"sampling parameter structural_tag is not valid JSON ({exc}): {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"sampling parameter structural_tag must be a JSON object, got {value!r}")
    return json.dumps(value)
