"""Tracing: run a program without a model to find the text every run of it starts with.

The program runs against a `TracerState`: constant text and roles extend the prefix; the first thing
whose value depends on the run (a gen, a select, a variable read, a fork, or any use of an argument not
bound with `bind`) ends the trace. `run_batch` prefills the prefix once before dispatching its
programs, so they all find it in the radix cache instead of computing it side by side in one batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.ir import Constant, Expr, ExprList, RoleBegin, RoleEnd, to_expr
from loomlm.lang.roles import RoleMethods


class _StopTracing(Exception):
    pass


@dataclass(frozen=True)
class ProgramTrace:
    prefix: str  # text every run begins with
    nodes: tuple[Expr, ...]  # the constant nodes that make it
    stopped_at: str  # what ended the trace ("end of program" when nothing did)


class TracedArgument:
    """Stands for a program argument: any use of its value ends the trace."""

    def __init__(self, name: str):
        self._name = name

    def _stop(self, *_args: Any, **_kwargs: Any) -> Any:
        raise _StopTracing(f"argument {self._name!r}")

    __str__ = __format__ = __add__ = __radd__ = __iter__ = __len__ = __bool__ = __getitem__ = _stop
    __eq__ = __lt__ = __gt__ = __int__ = __float__ = __contains__ = __call__ = _stop
    __hash__ = None  # type: ignore[assignment]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise _StopTracing(f"argument {self._name!r}")


class TracerState(RoleMethods):
    """A `ProgramState` look-alike that records constant text until the first run-dependent step."""

    def __init__(self, chat_template: ChatTemplate):
        self._template = chat_template
        self._messages = 0
        self.nodes: list[Expr] = []
        self.prefix = ""

    def _take(self, expr: Expr) -> None:
        if isinstance(expr, ExprList):
            for part in expr.exprs:
                self._take(part)
            return
        if isinstance(expr, Constant):
            self.prefix += expr.text
        elif isinstance(expr, RoleBegin):
            self.prefix += self._template.prefix(expr.role, first=self._messages == 0)
        elif isinstance(expr, RoleEnd):
            self.prefix += self._template.suffix(expr.role)
            self._messages += 1
        else:
            raise _StopTracing(type(expr).__name__.lower())
        self.nodes.append(expr)

    def __iadd__(self, other: Any) -> TracerState:
        self._take(to_expr(other))
        return self

    _add_node = _take

    def _stop(self, what: str) -> Any:
        raise _StopTracing(what)

    def __getitem__(self, name: str) -> Any:
        return self._stop(f"read of variable {name!r}")

    def fork(self, *_args: Any, **_kwargs: Any) -> Any:
        return self._stop("fork")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return lambda *a, **k: self._stop(f"s.{attr}()")


def trace_program(func: Callable[..., Any], bound: dict[str, Any], chat_template: ChatTemplate) -> ProgramTrace:
    """Trace `func(s, **args)` with unbound arguments replaced by `TracedArgument`s."""
    params = list(inspect.signature(func).parameters.values())[1:]
    args = {
        p.name: bound.get(p.name, TracedArgument(p.name))
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    state = TracerState(chat_template)
    stopped_at = "end of program"
    try:
        func(state, **args)
    except _StopTracing as stop:
        stopped_at = str(stop.args[0]) if stop.args else "unknown"
    except Exception as exc:  # the program needed a real value somewhere: the prefix so far stands
        stopped_at = f"{type(exc).__name__}: {exc}"
    return ProgramTrace(state.prefix, tuple(state.nodes), stopped_at)
