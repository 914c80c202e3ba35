"""The program IR: plain node values that `gen`, `select`, roles and text become, and `GenParams`.

A program appends nodes to its state (`s += node`); the executor (`interpreter.py`) runs them in order.
`Expr.__add__` lets users write `"Q: " + gen("a")`, which becomes one `ExprList`.

`GenParams` is the one definition of a `gen` call's sampling arguments, under SGLang's frontend names
(`max_tokens`, `min_tokens`, ...). Every field defaults to None, meaning "not given here": a gen's own
values are merged over the program-wide defaults of `run(...)` (`merged_over`), and only then turned
into the engine's sampling-parameter dict (`to_sampling_dict`), which the engine validates.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

# `dtype` of a gen, by type or name: the output is constrained by the grammars' typed-shortcut regex and
# the variable stays text, as in SGLang.
DTYPES = {int: int, float: float, str: str, bool: bool, "int": int, "float": float, "str": str, "bool": bool}


class Expr:
    """Base of every node; `a + b` concatenates nodes (strings become `Constant`)."""

    def __add__(self, other: Any) -> ExprList:
        return ExprList((*_flatten(self), *_flatten(to_expr(other))))

    def __radd__(self, other: Any) -> ExprList:
        return ExprList((*_flatten(to_expr(other)), *_flatten(self)))


def to_expr(value: Any) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Constant(value)
    if isinstance(value, (int, float, bool)):
        return Constant(str(value))
    getattr(value, "as_program_text", None)  # a tracer placeholder ends the trace here
    raise TypeError(f"cannot add a {type(value).__name__} to a program: use a string, gen(), select() or a role")


def role_expr(role: str, expr: Any) -> ExprList:
    """A whole message: begin `role`, `expr`, end it."""
    return ExprList((RoleBegin(role), to_expr(expr), RoleEnd(role)))


def _flatten(expr: Expr) -> tuple[Expr, ...]:
    return expr.exprs if isinstance(expr, ExprList) else (expr,)


_CONSTRAINTS = ("regex", "json_schema", "dtype", "grammar", "structural_tag")  # at most one per gen


@dataclass(frozen=True)
class GenParams:
    """Sampling arguments of one gen (None = inherit the program default, then the engine default)."""

    # SGLang's `gen` arguments, in its order (`gen`'s signature is built from these fields).
    max_tokens: int | None = None
    min_tokens: int | None = None
    n: int | None = None  # 1 only: a gen makes one completion (see __post_init__)
    stop: str | tuple[str, ...] | None = None
    stop_token_ids: tuple[int, ...] | None = None
    stop_regex: str | tuple[str, ...] | None = None  # accepted for SGLang; not supported (an error)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    dtype: Any = None  # int, float, str, bool (or their names)
    regex: str | None = None
    json_schema: Any = None  # dict, JSON text or pydantic model class
    # loomlm's additions (constraints: a lark-dialect EBNF grammar; SGLang-style structural tag)
    grammar: str | None = None
    structural_tag: Any = None  # dict or JSON text
    # loomlm's additions (engine sampling parameters SGLang's gen does not name).
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.stop_token_ids, list):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.n not in (None, 1):
            raise NotImplementedError(
                f"gen(n={self.n!r}): a gen makes one completion in loomlm; use s.fork(n) for several"
            )
        if self.stop_regex is not None:
            raise NotImplementedError(
                "gen(stop_regex=...) is not supported by loomlm's engine; use stop= "
                "strings or regex= to constrain the output"
            )
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"gen dtype must be one of int, float, str, bool, got {self.dtype!r}")
        given = [n for n in _CONSTRAINTS if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"gen arguments {' and '.join(given)} cannot be combined: give at most one")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def merged_over(self, defaults: GenParams) -> GenParams:
        """These values where given, else `defaults`' (constraints are never inherited)."""
        values = {}
        for name in self.field_names():
            mine = getattr(self, name)
            inherit = name not in _CONSTRAINTS
            values[name] = mine if mine is not None or not inherit else getattr(defaults, name)
        return GenParams(**values)

    def with_stop(self, extra: tuple[str, ...]) -> GenParams:
        """Adds stop strings (a chat template's end-of-turn text)."""
        if not extra:
            return self
        stop = () if self.stop is None else ((self.stop,) if isinstance(self.stop, str) else self.stop)
        return dataclasses.replace(self, stop=tuple(dict.fromkeys((*stop, *extra))))

    def to_sampling_dict(self) -> dict[str, Any]:
        """The engine's sampling-parameter dict (`runtime/sampling_params.py` names); unset fields left out."""
        renames = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}
        skip = {
            "return_logprob",
            "logprob_start_len",
            "top_logprobs_num",
            "return_text_in_logprobs",
            "dtype",
            "json_schema",
            "n",
            "stop_regex",
            "grammar",
            "structural_tag",
        }
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if value is None or name in skip:
                continue
            out[renames.get(name, name)] = list(value) if isinstance(value, tuple) else value
        if self.json_schema is not None:
            schema = self.json_schema
            if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
                schema = schema.model_json_schema()
            out["json_schema"] = schema if isinstance(schema, str) else json.dumps(schema)
        if self.grammar is not None:
            out["ebnf"] = self.grammar
        if self.structural_tag is not None:
            tag = self.structural_tag
            out["structural_tag"] = tag if isinstance(tag, str) else json.dumps(tag)
        if self.dtype is not None:
            from loomlm.grammars import type_regex

            out["regex"] = type_regex(DTYPES[self.dtype])
        return out

    def logprob_options(self) -> LogprobRequest:
        return LogprobRequest(
            bool(self.return_logprob),
            self.top_logprobs_num or 0,
            -1 if self.logprob_start_len is None else self.logprob_start_len,
            bool(self.return_text_in_logprobs),
        )


@dataclass(frozen=True)
class LogprobRequest:
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logprob_start_len: int = -1
    return_text_in_logprobs: bool = False


@dataclass(frozen=True, eq=False)
class ExprList(Expr):
    exprs: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class Constant(Expr):
    text: str


@dataclass(frozen=True, eq=False)
class Gen(Expr):
    name: str | None
    params: GenParams


@dataclass(frozen=True, eq=False)
class Select(Expr):
    name: str | None
    choices: tuple[str, ...]
    temperature: float
    choices_method: Any  # a ChoicesMethod (lang/choices.py)


@dataclass(frozen=True, eq=False)
class RoleMark(Expr):
    role: str


class RoleBegin(RoleMark):
    """Opens a message of `role` (the chat template's prefix)."""


class RoleEnd(RoleMark):
    """Closes it (the template's suffix); the text between becomes the message."""


@dataclass(frozen=True, eq=False)
class VarScopeMark(Expr):
    name: str


class VarScopeBegin(VarScopeMark):
    """The text appended from here ..."""


class VarScopeEnd(VarScopeMark):
    """... to here becomes variable `name`."""


@dataclass(frozen=True, eq=False)
class CommitLazy(Expr):
    """Prefill the text so far (before a fork: every branch then hits the shared prefix in the cache)."""


@dataclass(frozen=True, eq=False)
class ConcatAndAppend(Expr):
    """Append each fork branch's own text (after the fork point) to the parent, in branch order."""

    branches: tuple[Any, ...]  # StreamExecutors


def variable_names(expr: Expr) -> list[str]:
    """Variables this node will set, registered at submit time so readers know to wait for them."""
    if isinstance(expr, ExprList):
        return [n for e in expr.exprs for n in variable_names(e)]
    if isinstance(expr, (Gen, Select)) and expr.name is not None:
        return [expr.name]
    if isinstance(expr, VarScopeEnd):
        return [expr.name]
    return []
