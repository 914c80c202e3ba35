"""The executor of one program run: a worker thread that runs IR nodes in order against a backend.

`s += node` only queues the node (non-blocking); reading a variable waits for the node that sets it.
Each variable a queued node will set gets a `_VarSlot` at submit time: an event, the stream of its
increments, and the error if its node failed. Once a node fails, later nodes of the same program are
skipped and every variable they would have set raises that first error when read.

`fork(n)` first prefills the text so far (one `CommitLazy`), so every branch finds the shared prefix in
the radix cache, then copies the state into `n` new executors that run concurrently.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loomlm.global_config import global_config
from loomlm.lang.backends.base import Backend, chat_kwargs
from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.ir import (
    CommitLazy,
    ConcatAndAppend,
    Constant,
    Expr,
    ExprList,
    Gen,
    GenParams,
    RoleBegin,
    RoleEnd,
    Select,
    VarScopeBegin,
    VarScopeEnd,
    variable_names,
)


class StreamLog:
    """Increments of a text as they are produced (the program's text, or one variable's)."""

    def __init__(self) -> None:
        self._chunks: list[tuple[str, dict[str, Any] | None]] = []
        self._done = False
        self._cond = threading.Condition()

    def push(self, text: str, meta: dict[str, Any] | None) -> None:
        with self._cond:
            self._chunks.append((text, meta))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_from(self, start: int) -> tuple[list[tuple[str, dict[str, Any] | None]], bool]:
        """Chunks from index `start` (waiting until there is one or the log is closed), and whether closed."""
        with self._cond:
            while len(self._chunks) <= start and not self._done:
                self._cond.wait()
            return self._chunks[start:], self._done


@dataclass(eq=False)
class _VarSlot:
    event: threading.Event = field(default_factory=threading.Event)
    log: StreamLog = field(default_factory=StreamLog)
    error: BaseException | None = None

    def done(self) -> None:
        self.log.close()
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done()

    def wait(self) -> None:
        self.event.wait()
        if self.error is not None:
            raise self.error


class StreamExecutor:
    def __init__(self, backend: Backend, defaults: GenParams, stream: bool, chat_template: ChatTemplate | None = None):
        self.backend = backend
        self.defaults = defaults
        self.stream = stream
        self.chat_template = chat_template or backend.chat_template
        self.text_ = ""
        self.messages_: list[dict[str, str]] = []
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.assigned: list[str] = []  # variables set by this executor (fork join gathers these)
        self.error_: BaseException | None = None
        self.cur_role: str | None = None
        self.cur_role_begin_pos = 0
        self.fork_start_pos = 0  # where a fork branch's own text begins
        self.children: list[StreamExecutor] = []
        self.text_log = StreamLog()
        self._slots: dict[str, _VarSlot] = {}
        self._scopes: dict[str, int] = {}
        self._queue: queue.Queue = queue.Queue()
        self._ended = False
        self._worker = threading.Thread(target=self._work, name="loomlm-program", daemon=True)
        self._worker.start()

    # ---- user-thread API ---------------------------------------------------------------------
    def submit(self, expr: Expr) -> None:
        if self._ended:
            raise RuntimeError("this program has finished running; it takes no more text or gens")
        slots = {name: _VarSlot() for name in variable_names(expr)}
        self._slots.update(slots)
        self._queue.put((expr, slots))

    def sync(self) -> None:
        self._queue.join()

    def sync_tree(self) -> None:
        """Wait for this program and every fork branch under it, however deep."""
        self.sync()
        for child in list(self.children):
            child.sync_tree()

    def end(self) -> None:
        """No more nodes: the worker exits after the queued ones (and so do fork branches')."""
        if not self._ended:
            self._ended = True
            self._queue.put(None)
        for child in self.children:
            child.end()

    def slot(self, name: str) -> _VarSlot | None:
        return self._slots.get(name)

    def get_var(self, name: str) -> Any:
        slot = self._slots.get(name)
        if slot is not None:
            slot.wait()
        elif name not in self.variables:
            self.sync()
        if name not in self.variables:
            known = ", ".join(sorted(self.variables)) or "none"
            raise KeyError(f"the program has no variable {name!r} (variables: {known})")
        return self.variables[name]

    def set_var(self, name: str, value: Any) -> None:
        """Set by the program's Python code (or a join): the variable is this executor's own, so an outer
        join gathers it too."""
        self.variables[name] = value
        if name not in self.assigned:
            self.assigned.append(name)

    def get_meta_info(self, name: str) -> Any:
        self.get_var(name)
        return self.meta_info.get(name)

    def fork(self, size: int) -> list[StreamExecutor]:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"fork size must be a positive integer, got {size!r}")
        if size > 1:
            self.submit(CommitLazy())
        self.sync()
        if self.error_ is not None:
            raise self.error_
        children = []
        for _ in range(size):
            child = StreamExecutor(self.backend, self.defaults, self.stream, self.chat_template)
            child.text_ = self.text_
            child.messages_ = list(self.messages_)
            child.variables = dict(self.variables)
            child.meta_info = dict(self.meta_info)
            child.cur_role, child.cur_role_begin_pos = self.cur_role, self.cur_role_begin_pos
            child.fork_start_pos = len(self.text_)
            children.append(child)
        self.children += children
        return children

    def iter_log(self, name: str | None) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(text, meta) increments of the program text (name None) or of one variable, as produced."""
        if name is None:
            log, slot = self.text_log, None
        else:
            slot = self._slots.get(name)
            if slot is None:
                yield str(self.get_var(name)), self.meta_info.get(name)
                return
            log = slot.log
        start = 0
        while True:
            chunks, closed = log.wait_from(start)
            yield from chunks
            start += len(chunks)
            if closed:
                break
        if slot is not None and slot.error is not None:
            raise slot.error

    # ---- worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                expr, slots = item
                try:
                    if self.error_ is not None:
                        raise self.error_
                    self._execute(expr, slots)
                except BaseException as exc:  # handed to whoever reads the node's variables
                    if self.error_ is None:
                        self.error_ = exc
                    for slot in slots.values():
                        slot.fail(self.error_)
            finally:
                self._queue.task_done()
                if item is None:
                    self.text_log.close()

    def _append(self, text: str) -> None:
        if text:
            self.text_ += text
            self.text_log.push(text, None)

    def _set(self, name: str, value: Any, meta: Any, slots: dict[str, _VarSlot]) -> None:
        self.variables[name] = value
        if meta is not None:
            self.meta_info[name] = meta
        if name not in self.assigned:
            self.assigned.append(name)
        slot = slots.get(name)
        if slot is not None:
            slot.done()

    def _execute(self, expr: Expr, slots: dict[str, _VarSlot]) -> None:
        if isinstance(expr, ExprList):
            for part in expr.exprs:
                self._execute(part, slots)
        elif isinstance(expr, Constant):
            self._append(expr.text)
        elif isinstance(expr, Gen):
            self._gen(expr, slots)
        elif isinstance(expr, Select):
            decision = self.backend.select(
                self.text_, expr.choices, expr.choices_method, **chat_kwargs(self.backend, self)
            )
            self._append(decision.decision)
            if expr.name is not None:
                slot = slots.get(expr.name)
                if slot is not None:
                    slot.log.push(decision.decision, decision.meta_info)
                self._set(expr.name, decision.decision, decision.meta_info, slots)
        elif isinstance(expr, RoleBegin):
            if self.cur_role is not None:
                raise ValueError(f"role {expr.role!r} begins inside role {self.cur_role!r}; end that one first")
            self._append(self.chat_template.prefix(expr.role, first=not self.messages_))
            self.cur_role, self.cur_role_begin_pos = expr.role, len(self.text_)
        elif isinstance(expr, RoleEnd):
            if self.cur_role != expr.role:
                raise ValueError(f"role {expr.role!r} ends but the open role is {self.cur_role!r}")
            self.messages_.append({"role": expr.role, "content": self.text_[self.cur_role_begin_pos :]})
            self._append(self.chat_template.suffix(expr.role))
            self.cur_role = None
        elif isinstance(expr, VarScopeBegin):
            self._scopes[expr.name] = len(self.text_)
        elif isinstance(expr, VarScopeEnd):
            if expr.name not in self._scopes:
                raise ValueError(f"var_scope {expr.name!r} ends without beginning")
            self._set(expr.name, self.text_[self._scopes.pop(expr.name) :], None, slots)
        elif isinstance(expr, CommitLazy):
            self.backend.prefill(self.text_)
        elif isinstance(expr, ConcatAndAppend):
            for branch in expr.branches:
                branch.sync()
                if branch.error_ is not None:
                    raise branch.error_
                self._append(branch.text_[branch.fork_start_pos :])
        else:
            raise TypeError(f"unknown program node {expr!r}")

    def _gen(self, gen: Gen, slots: dict[str, _VarSlot]) -> None:
        params = gen.params.merged_over(self.defaults)
        if self.cur_role is not None:  # inside a role the model may end its turn in text
            params = params.with_stop(self.chat_template.stop)
        sampling, logprobs = params.to_sampling_dict(), params.logprob_options()
        if not global_config.skip_special_tokens_in_output:
            sampling["skip_special_tokens"] = False
        chat = chat_kwargs(self.backend, self)  # the conversation, for chat-API backends
        slot = slots.get(gen.name) if gen.name is not None else None
        if self.stream:
            value, meta = "", {}
            for chunk in self.backend.generate_stream(self.text_, sampling, logprobs, **chat):
                value, meta = value + chunk.text, chunk.meta_info
                self._append(chunk.text)
                if slot is not None:
                    slot.log.push(chunk.text, chunk.meta_info)
        else:
            result = self.backend.generate(self.text_, sampling, logprobs, **chat)
            value, meta = result.text, result.meta_info
            self._append(value)
            if slot is not None:
                slot.log.push(value, meta)
        if gen.name is not None:
            self._set(gen.name, value, meta, slots)
