"""`GrammarCache`: compiles guides on worker threads, at most once per (kind, spec, vocabulary, limits).

The engine's scheduler loop never compiles: it asks for a future and parks the request until the
future is done, so a slow schema delays only its own requests. Entries (including failed compiles,
so a bad schema sent twice fails fast twice) live in a bounded LRU.

Failure contract: a future from `get` always ends in a guide or a `GrammarError`, never another
exception: unexpected compiler errors are wrapped, and `shutdown` fails the compiles still pending.
Failures that depend on the machine (`GrammarTimeoutError`, unexpected errors) are not kept, so the
same grammar sent again compiles again.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loomlm.grammars.cfg_guide import compile_ebnf
from loomlm.grammars.errors import GrammarError, GrammarTimeoutError
from loomlm.grammars.guide import compile_choices, compile_json_schema, compile_regex, compile_type
from loomlm.grammars.guide_protocol import Guide
from loomlm.grammars.limits import GrammarLimits
from loomlm.grammars.vocabulary import Vocabulary

KINDS = ("regex", "json_schema", "choices", "type", "ebnf", "structural_tag")
# The sampling parameters that name a constraint (a request sets at most one), in precedence order.
CONSTRAINT_PARAMS = ("regex", "json_schema", "choices", "ebnf", "structural_tag")
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class GrammarSpec:
    """What to constrain to: kind in KINDS and a hashable spec (the regex, the JSON schema as JSON
    text, the tuple of choices, or the type name)."""

    kind: str
    spec: Any

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"grammar kind must be one of {KINDS}, got {self.kind!r}")
        hash(self.spec)


def compile_spec(spec: GrammarSpec, vocab: Vocabulary, limits: GrammarLimits, whitespace: str = "default") -> Guide:
    if spec.kind == "regex":
        return compile_regex(spec.spec, vocab, limits)
    if spec.kind == "json_schema":
        return compile_json_schema(spec.spec, vocab, whitespace=whitespace, limits=limits)
    if spec.kind == "choices":
        return compile_choices(list(spec.spec), vocab, limits)
    if spec.kind == "ebnf":
        return compile_ebnf(spec.spec, vocab, limits)
    if spec.kind == "structural_tag":
        from loomlm.grammars.structural_tag import compile_structural_tag

        return compile_structural_tag(spec.spec, vocab, limits, whitespace=whitespace)
    return compile_type(_TYPES[spec.spec], vocab, limits)


# (spec, vocabulary, limits, whitespace) -> guide: `compile_spec`, or a test's wrapper of it.
Compiler = Callable[[GrammarSpec, Vocabulary, GrammarLimits, str], Guide]


class GrammarCache:
    def __init__(
        self,
        vocab: Vocabulary,
        limits: GrammarLimits | None = None,
        max_entries: int = 128,
        workers: int = 2,
        whitespace: str = "default",
        compiler: Compiler = compile_spec,
    ):
        if max_entries < 1 or workers < 1:
            raise ValueError(f"GrammarCache needs max_entries >= 1 and workers >= 1, got {max_entries}, {workers}")
        self.vocab = vocab
        self.limits = limits or GrammarLimits()
        self.max_entries = max_entries
        self.whitespace = whitespace
        self.compiler = compiler  # read by each compile when it starts (tests may swap it)
        self._entries: OrderedDict[tuple, concurrent.futures.Future] = OrderedDict()
        self._pending: set[concurrent.futures.Future] = set()  # submitted, not settled yet
        self._lock = threading.Lock()
        self._closed = False
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="loomlm-grammar")
        self.hits = 0
        self.misses = 0

    def get(self, spec: GrammarSpec) -> concurrent.futures.Future:
        """A future of the compiled guide (already done on a cache hit). It fails with GrammarError."""
        key = (spec.kind, spec.spec, self.vocab.fingerprint, self.limits, self.whitespace)
        with self._lock:
            fut = self._entries.get(key)
            if fut is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return fut
            fut = concurrent.futures.Future()
            if self._closed:
                fut.set_exception(GrammarError(f"cannot compile {spec.kind}: the grammar cache is shut down"))
                return fut
            self.misses += 1
            self._entries[key] = fut
            self._pending.add(fut)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)  # a pending future evicted still settles for its waiters
            self._pool.submit(self._run, key, spec, fut)
            return fut

    def compile(self, spec: GrammarSpec) -> Guide:
        """Blocking form of `get`."""
        return self.get(spec).result()

    def _run(self, key: tuple, spec: GrammarSpec, fut: concurrent.futures.Future) -> None:
        """Worker body: compile, then settle `fut` (it is never left pending, whatever the compiler does)."""
        try:
            guide = self.compiler(spec, self.vocab, self.limits, self.whitespace)
        except Exception as exc:  # every failure reaches the waiter as a GrammarError
            error, keep = _as_grammar_error(spec, exc)
            with self._lock:
                if not keep and self._entries.get(key) is fut:
                    del self._entries[key]
            self._settle(fut, error=error)
        else:
            self._settle(fut, guide=guide)

    def _settle(
        self, fut: concurrent.futures.Future, guide: Guide | None = None, error: GrammarError | None = None
    ) -> None:
        with self._lock:
            if fut not in self._pending:  # already failed by shutdown
                return
            self._pending.discard(fut)
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(guide)

    def __len__(self) -> int:
        return len(self._entries)

    def shutdown(self) -> None:
        """Stop the workers; compiles not finished yet fail with GrammarError (their waiters wake)."""
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, set()
            for key in [k for k, f in self._entries.items() if f in pending]:
                del self._entries[key]
        self._pool.shutdown(wait=False, cancel_futures=True)
        for fut in pending:
            fut.set_exception(GrammarError("the grammar cache was shut down before this grammar compiled"))


def _as_grammar_error(spec: GrammarSpec, exc: Exception) -> tuple[GrammarError, bool]:
    """(the error a waiter gets, whether the cache may keep it: only deterministic failures)."""
    if isinstance(exc, GrammarError):
        if spec.kind not in str(exc):  # the message names what was refused (a caller may send several)
            named = type(exc)(f"invalid {spec.kind}: {exc}")
            named.__cause__ = exc
            exc = named
        return exc, not isinstance(exc, GrammarTimeoutError)
    if isinstance(exc, RecursionError):
        return GrammarError(f"{spec.kind} is nested too deeply to compile"), True
    error = GrammarError(f"compiling {spec.kind} failed: {exc!r}")
    error.__cause__ = exc
    return error, False


def spec_from_params(params: Any) -> GrammarSpec | None:
    """The one constraint a request's sampling parameters (any object with the CONSTRAINT_PARAMS
    attributes; they validate that at most one is set) ask for, or None."""
    for kind in CONSTRAINT_PARAMS:
        value = getattr(params, kind, None)
        if value is not None:
            return GrammarSpec(kind, tuple(value) if kind == "choices" else value)
    return None


def canonical_json_schema(schema: Any) -> str:
    """A JSON schema given as dict/bool/JSON text -> JSON text (a hashable cache key). Pydantic model
    classes become their JSON schema."""
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"sampling parameter json_schema is not valid JSON ({exc}): {schema[:200]!r}") from None
    if isinstance(schema, (dict, bool)):
        return json.dumps(schema)  # keeps key order: properties are emitted in schema order
    raise ValueError(f"sampling parameter json_schema must be a JSON string, dict or pydantic model, got {schema!r}")
