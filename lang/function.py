"""`@function` programs: `run`, `run_batch`, `bind`, `trace` (SGLang's `SglFunction`).

`prog.run(**arguments, stream=False, backend=None, **sampling_defaults)` starts the program on its own
executor and returns its `ProgramState` as soon as the function body has queued its nodes; reading a
variable waits for it. The sampling defaults (`max_new_tokens`, `temperature`, `stop`, ...) apply to
every gen that does not set its own; everything else is an argument of the program, checked against
its signature. `run_batch` runs many argument sets on a thread pool after prefilling the program's
constant prefix once.
"""

from __future__ import annotations

import difflib
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tqdm

from loomlm.global_config import global_config
from loomlm.lang.backends.default import resolve_backend
from loomlm.lang.interpreter import StreamExecutor
from loomlm.lang.ir import GenParams
from loomlm.lang.state import ProgramState
from loomlm.lang.tracer import ProgramTrace, TracerState, trace_program

# run()'s sampling defaults: GenParams' inheritable fields, and SGLang's `max_new_tokens` spelling.
_SAMPLING_NAMES = (set(GenParams.field_names()) - {"regex", "json_schema", "dtype"}) | {"max_new_tokens"}
_RUN_DEFAULTS = {"max_tokens": 128}


def _split_sampling(kwargs: dict[str, Any], program_args: set[str]) -> tuple[GenParams, dict[str, Any]]:
    """(run's sampling defaults, the program's arguments); a name the program declares is its argument."""
    sampling = {k: kwargs.pop(k) for k in list(kwargs) if k in _SAMPLING_NAMES and k not in program_args}
    if "max_new_tokens" in sampling:
        if "max_tokens" in sampling:
            raise TypeError("give max_new_tokens or max_tokens, not both")
        sampling["max_tokens"] = sampling.pop("max_new_tokens")
    return GenParams(**{**_RUN_DEFAULTS, **sampling}), kwargs


class SglFunction:
    """A program: a Python function whose first argument is the program state `s`."""

    def __init__(self, func: Callable[..., Any], bind_arguments: dict[str, Any] | None = None):
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            raise TypeError(f"@function {func.__name__} must take the program state as its first argument")
        self.func = func
        self.bind_arguments = dict(bind_arguments or {})
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__
        self._signature = inspect.signature(func)
        self._arg_names = set(list(self._signature.parameters)[1:])

    def _check_names(self, names: Any) -> None:
        params = self._signature.parameters
        known = list(params)[1:]
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(
                    f"program {self.__name__} got an unexpected argument {name!r}{hint}; "
                    f"its arguments: {', '.join(known) or 'none'}"
                )

    def _bind(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        self._check_names(kwargs)
        try:
            bound = self._signature.bind(None, *args, **{**self.bind_arguments, **kwargs})
        except TypeError as exc:
            raise TypeError(f"program {self.__name__}: {exc}") from None
        values = dict(bound.arguments)
        values.pop(next(iter(self._signature.parameters)))
        return values

    def bind(self, **kwargs: Any) -> SglFunction:
        """A copy with some arguments fixed (they count as constants when tracing)."""
        self._check_names(kwargs)
        return SglFunction(self.func, {**self.bind_arguments, **kwargs})

    def run(self, *args: Any, stream: bool = False, backend: Any = None, **kwargs: Any) -> ProgramState:
        defaults, program_kwargs = _split_sampling(dict(kwargs), self._arg_names)
        arguments = self._bind(args, program_kwargs)
        backend = resolve_backend(backend)
        state = ProgramState(StreamExecutor(backend, defaults, stream))
        if stream:
            threading.Thread(target=self._run_body, args=(state, arguments, False), daemon=True).start()
        else:
            self._run_body(state, arguments, True)
        return state

    def _run_body(self, state: ProgramState, arguments: dict[str, Any], reraise: bool) -> None:
        try:
            state.ret_value = self.func(state, **arguments)
        except BaseException as exc:
            if state.stream_executor.error_ is None:
                state.stream_executor.error_ = exc
            if reraise:
                raise
        finally:
            state.stream_executor.end()
        if global_config.verbosity >= 2:  # SGLang's verbosity: print each finished run's text
            print(state.text())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`prog(**arguments)` is `prog.run(...)`; `prog(s, ...)` inside another program runs the body on
        that program's state (sub-programs)."""
        if args and isinstance(args[0], (ProgramState, TracerState)):
            return self.func(*args, **{**self.bind_arguments, **kwargs})
        return self.run(*args, **kwargs)

    def run_batch(
        self,
        batch_kwargs: list[dict[str, Any]],
        *,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        backend: Any = None,
        generator_style: bool = False,
        **sampling: Any,
    ) -> Any:
        """Run the program once per argument dict, concurrently; returns the finished states in order
        (`generator_style=True`: an iterator yielding them in order as they finish)."""
        if not isinstance(batch_kwargs, (list, tuple)) or not all(isinstance(k, dict) for k in batch_kwargs):
            raise TypeError("run_batch takes a list of argument dicts")
        if not batch_kwargs:
            return []
        backend = resolve_backend(backend)
        for kwargs in batch_kwargs:  # argument errors surface before anything runs
            self._bind((), _split_sampling(dict(kwargs), self._arg_names)[1])
        if num_threads == "auto":
            num_threads = max(64, 16 * (os.cpu_count() or 1))
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(f"num_threads must be 'auto' or a positive integer, got {num_threads!r}")
        if len(batch_kwargs) > 1 and global_config.enable_precache_with_tracing:
            prefix = self.trace(backend=backend).prefix
            if prefix:
                backend.prefill(prefix)

        def run_one(kwargs: dict[str, Any]) -> ProgramState:
            state = self.run(backend=backend, **{**sampling, **kwargs})
            state.stream_executor.sync_tree()
            return state

        results = self._dispatch(run_one, batch_kwargs, num_threads, progress_bar)
        return results if generator_style else list(results)

    def _dispatch(
        self,
        run_one: Callable[[dict[str, Any]], ProgramState],
        batch_kwargs: list[dict[str, Any]],
        num_threads: int,
        progress_bar: bool,
    ) -> Iterator[ProgramState]:
        bar = tqdm.tqdm(total=len(batch_kwargs), desc=self.__name__, disable=not progress_bar)
        try:
            with ThreadPoolExecutor(min(num_threads, len(batch_kwargs))) as pool:
                futures = [pool.submit(run_one, kwargs) for kwargs in batch_kwargs]
                for future in futures:
                    future.add_done_callback(lambda _f: bar.update())
                for future in futures:
                    yield future.result()
        finally:
            bar.close()

    def trace(self, backend: Any = None, **kwargs: Any) -> ProgramTrace:
        """The constant prefix of the program (with `bind` and `kwargs` arguments as constants)."""
        template = resolve_backend(backend).chat_template
        return trace_program(self.func, {**self.bind_arguments, **kwargs}, template)


def function(func: Callable[..., Any] | None = None, *, num_api_spec_tokens: int | None = None):
    """Decorator: `@function` or `@function(...)` turns `def prog(s, ...)` into an `SglFunction`.
    (`num_api_spec_tokens`, SGLang's API speculative execution, is accepted and has no effect.)"""
    if func is None:
        return lambda f: SglFunction(f)
    return SglFunction(func)
