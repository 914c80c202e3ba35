"""The functions programs are written with: `gen`, `select`, roles, and backend selection.

Names and argument names are SGLang's, so `import loomlm as sgl` runs SGLang programs unchanged.
`gen(choices=...)` is a `select`; `gen(dtype=int)` constrains the output to an integer (the variable
stays text); `gen(json_schema=Model)` takes a dict, JSON text or pydantic model class.
"""

from __future__ import annotations

from typing import Any, Sequence

from loomlm.lang.choices import ChoicesMethod, token_length_normalized
from loomlm.lang.ir import Expr, ExprList, Gen, GenParams, RoleBegin, RoleEnd, Select, to_expr


def gen(name: str | None = None, max_tokens: int | None = None, min_tokens: int | None = None,
        stop: str | Sequence[str] | None = None, stop_token_ids: Sequence[int] | None = None,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        min_p: float | None = None, frequency_penalty: float | None = None,
        presence_penalty: float | None = None, ignore_eos: bool | None = None,
        return_logprob: bool | None = None, logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None, return_text_in_logprobs: bool | None = None,
        dtype: Any = None, choices: Sequence[str] | None = None,
        choices_method: ChoicesMethod | None = None, regex: str | None = None, json_schema: Any = None,
        repetition_penalty: float | None = None, seed: int | None = None) -> Expr:
    """Generate text into variable `name` (None: appended, not stored). Unset arguments inherit the
    defaults given to `run`."""
    if choices is not None:
        return select(name, choices, temperature or 0.0, choices_method or token_length_normalized)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"gen name must be a string, got {name!r}")
    params = GenParams(max_tokens=max_tokens, min_tokens=min_tokens, stop=stop, stop_token_ids=stop_token_ids,
                       temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                       frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                       repetition_penalty=repetition_penalty, ignore_eos=ignore_eos, seed=seed,
                       return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                       top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs,
                       regex=regex, json_schema=json_schema, dtype=dtype)
    return Gen(name, params)


def gen_int(name: str | None = None, **kwargs: Any) -> Expr:
    return gen(name, dtype=int, **kwargs)


def gen_string(name: str | None = None, **kwargs: Any) -> Expr:
    return gen(name, dtype=str, **kwargs)


def select(name: str | None = None, choices: Sequence[str] | None = None, temperature: float = 0.0,
           choices_method: ChoicesMethod = token_length_normalized) -> Expr:
    """Append the choice the model scores highest (see `loomlm.lang.choices` for the methods)."""
    if choices is None or isinstance(choices, str) or not list(choices) \
            or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"select choices must be a non-empty list of non-empty strings, got {choices!r}")
    if not isinstance(choices_method, ChoicesMethod):
        raise TypeError(f"choices_method must be one of loomlm's choices methods, got {choices_method!r}")
    return Select(name, tuple(choices), float(temperature), choices_method)


def _role(role: str, expr: Any) -> Expr:
    return ExprList((RoleBegin(role), to_expr(expr), RoleEnd(role)))


def system(expr: Any = "") -> Expr:
    return _role("system", expr)


def user(expr: Any = "") -> Expr:
    return _role("user", expr)


def assistant(expr: Any = "") -> Expr:
    return _role("assistant", expr)


def system_begin() -> Expr:
    return RoleBegin("system")


def system_end() -> Expr:
    return RoleEnd("system")


def user_begin() -> Expr:
    return RoleBegin("user")


def user_end() -> Expr:
    return RoleEnd("user")


def assistant_begin() -> Expr:
    return RoleBegin("assistant")


def assistant_end() -> Expr:
    return RoleEnd("assistant")
