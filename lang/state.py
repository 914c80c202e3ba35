"""`ProgramState` (the `s` of a program) and `ProgramStateGroup` (what `s.fork(n)` returns).

The API is SGLang's: `s += text | expr`, `s["var"]` (and `get_var`, `set_var`, `in`), `s.text()`,
`s.messages()`, `s.sync()`, `s.error()`, `s.get_meta_info(var)`, `s.var_scope(name)`, roles (a whole
message or a context manager), `s.fork(n)`, `s.copy()`, `s.text_iter(var)` and
`s.text_async_iter(var, return_meta_data=True)`; a fork's group takes `forks += expr | [exprs] | fn`
and `forks[i] += expr`. Reads block only until the value they need exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from loomlm.lang.interpreter import StreamExecutor
from loomlm.lang.ir import ConcatAndAppend, Expr, VarScopeBegin, VarScopeEnd, to_expr
from loomlm.lang.roles import RoleMethods


class ProgramState(RoleMethods):
    def __init__(self, executor: StreamExecutor):
        self.stream_executor = executor
        self.ret_value: Any = None

    # ---- building the program ---------------------------------------------------------------
    def __iadd__(self, other: Any) -> ProgramState:
        self.stream_executor.submit(to_expr(other))
        return self

    def _add_node(self, expr: Expr) -> None:
        self.stream_executor.submit(expr)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """The text appended inside the block becomes variable `name`."""
        self.stream_executor.submit(VarScopeBegin(name))
        yield
        self.stream_executor.submit(VarScopeEnd(name))

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        """`size` branches that start from the text so far (`position_ids_offset`, SGLang's, is unused)."""
        return ProgramStateGroup([ProgramState(e) for e in self.stream_executor.fork(size)], self)

    @contextmanager
    def copy(self, position_ids_offset: Any = None) -> Iterator[ProgramState]:
        """`with s.copy() as c:` one branch of `s`, joined back (its variables gathered) when the block ends."""
        group = self.fork(1, position_ids_offset)
        try:
            yield group[0]
        finally:
            group.join()

    # ---- reading ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return self.stream_executor.slot(name) is not None or name in self.stream_executor.variables

    def get_var(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str) -> Any:
        return self.stream_executor.get_meta_info(name)

    def text(self) -> str:
        self.stream_executor.sync()
        return self.stream_executor.text_

    def messages(self) -> list[dict[str, str]]:
        self.stream_executor.sync()
        return list(self.stream_executor.messages_)

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> BaseException | None:
        self.stream_executor.sync()
        return self.stream_executor.error_

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        for text, _meta in self.stream_executor.iter_log(var_name):
            yield text

    async def text_async_iter(self, var_name: str | None = None, return_meta_data: bool = False) -> AsyncIterator[Any]:
        """Async increments; with `return_meta_data`, (text, meta) pairs where meta holds the completion
        tokens and output token logprobs so far."""
        iterator = self.stream_executor.iter_log(var_name)
        done = object()
        while True:
            item = await asyncio.to_thread(next, iterator, done)
            if item is done:
                return
            text, meta = item
            yield (text, meta) if return_meta_data else text

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ProgramStateGroup:
    """The branches of a fork: index them, broadcast to them, and join them back."""

    def __init__(self, states: list[ProgramState], parent: ProgramState):
        self.states = states
        self.parent = parent

    @property
    def src_state(self) -> ProgramState:
        """SGLang's name for the state that forked."""
        return self.parent

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        """`forks[i] += expr` appends to branch i in place, then stores the same state back; only that is
        allowed (a branch cannot be replaced by another state)."""
        if value is not self.states[i]:
            raise TypeError(
                f"fork branch {i} can only be given back itself (as `forks[i] += ...` does), not {type(value).__name__}"
            )

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        """`branches += expr` appends to every branch; `branches += lambda i: expr` a branch's own, and
        `branches += [e0, e1, ...]` (one per branch) too."""
        per_branch: Callable[[int], Any] | None = None
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"got {len(other)} values for {len(self.states)} fork branches")
            per_branch = other.__getitem__
        elif callable(other) and not isinstance(other, (Expr, str)):
            per_branch = other
        for i, state in enumerate(self.states):
            state += per_branch(i) if per_branch is not None else other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """`gather_variable`: each variable a branch set becomes a list (one value per branch) in the
        parent. `concate_and_append`: the branches' own text is appended to the parent, in order."""
        executors = [state.stream_executor for state in self.states]
        if mode == "gather_variable":
            for executor in executors:
                executor.sync()
            names: list[str] = []
            for executor in executors:
                names += [n for n in executor.assigned if n not in names]
            parent = self.parent.stream_executor
            for name in names:
                parent.set_var(name, [e.get_var(name) if name in e.assigned else None for e in executors])
                parent.meta_info[name] = [e.meta_info.get(name) for e in executors]
        elif mode == "concate_and_append":
            self.parent.stream_executor.submit(ConcatAndAppend(tuple(executors)))
        else:
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', got {mode!r}")
