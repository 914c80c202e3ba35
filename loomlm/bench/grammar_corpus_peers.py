"""Worker processes of `python -m loomlm.bench grammar-corpus`: one per library, behind a watchdog.

`Worker` (the parent's handle) starts a "spawn" subprocess that loads the tokenizer the parent saved,
does its library's per-tokenizer set-up once (timed: `setup_ms`, then a warm-up compile of
`{"type": "integer"}` that builds the lazy per-vocabulary tables, timed apart: `warmup_ms`) and then
serves tasks: one schema (or EBNF grammar) with its tokenized documents. For each task the child sends
a "compiled" message (compile + first mask, cold), one "doc" message per document, then "done" with the
timed mask steps (int64 ns). The parent waits `budget + grace` seconds for "compiled" and
`doc_budget + grace` for each "doc"; past that it kills the child (a hang), starts a fresh one and
reports the rest of the task as overrun. A child that dies (a native crash, its memory limit) is a
"crash" and is restarted the same way. After its set-up each child moves the objects it holds out of
the garbage collector's generations (`gc.freeze()`), as a long-running server would.

Adapters: loomlm through its facade (`whitespace="default"`, `strict=False`; its functools caches
are cleared before each compile), XGrammar (`GrammarCompiler(cache_enabled=False)` per compile,
`any_whitespace=False`, separators `", "`/`": "`, `strict_mode=False`) and llguidance (`LLMatcher`,
separators `", "`/`": "`, no flexible whitespace, `lenient=True`: unknown keywords are ignored, as loomlm's
strict=False does). Every `fill()` writes the packed allowed-token bitmask (bit t % 32 of int32 word
t // 32) into a preallocated buffer; that call is the timed mask step.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import multiprocessing
import os
import resource
import sys
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

LIBRARIES = ("loomlm", "xgrammar", "llguidance")
WARMUP = {"kind": "json", "schema": {"type": "integer"}, "budget": 60.0}


class CompileFailure(Exception):
    """A grammar the library refused without raising (llguidance's error state)."""


@dataclass
class Matcher:
    """One walk over a compiled grammar: `fill()`, the timed call, writes the mask into `buf`;
    `advance(token)` is False when the token is refused; `end()`: EOS allowed and the text accepted;
    `fresh()`: the same grammar at its initial state; `snapshot()` runs once, after the timed compile."""

    buf: np.ndarray
    fill: Callable[[], Any]
    advance: Callable[[int], bool]
    end: Callable[[], bool]
    fresh: Callable[[], Matcher]
    snapshot: Callable[[], Any] = lambda: None

    def allows(self, token: int) -> bool:
        return bool((int(self.buf[token >> 5]) >> (token & 31)) & 1)


def _filled(matcher: Matcher) -> Matcher:
    matcher.fill()  # the first mask is part of the timed compile
    return matcher


def _loomlm_matcher(guide: Any, words: int) -> Matcher:
    from loomlm.grammars import REJECTED

    buf, state, fill_bitmask = np.zeros(words, dtype=np.int32), [guide.initial_state], guide.fill_bitmask

    def advance(token: int) -> bool:
        nxt = guide.advance(state[0], token)
        if nxt is REJECTED:
            return False
        state[0] = nxt
        return True

    end = lambda: bool(guide.is_accepting(state[0]))
    return Matcher(buf, lambda: fill_bitmask(state[0], buf), advance, end, lambda: _loomlm_matcher(guide, words))


class Loomlm:
    """The facade's compilers; before each compile its functools caches are cleared (cold), while the
    vocabulary's derived tables, built by the warm-up compile, are kept."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos: int):
        from loomlm.grammars import Vocabulary, bitmask_words

        self.vocab = Vocabulary.from_tokenizer(tokenizer)
        self.words = bitmask_words(self.vocab.size)

    def prepare(self, task: dict[str, Any]) -> Callable[[], Matcher]:
        from loomlm.grammars import GrammarLimits, compile_ebnf, compile_json_schema

        for name, module in list(sys.modules.items()):
            for value in list(vars(module).values()) if name.startswith("loomlm.grammars") and module else ():
                if hasattr(value, "cache_info") and callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()
        limits, vocab = GrammarLimits(max_seconds=task["budget"]), self.vocab
        if task["kind"] == "json":
            guide = lambda: compile_json_schema(
                task["schema"], vocab, whitespace="default", strict=False, limits=limits
            )
        else:
            guide = lambda: compile_ebnf(task["lark"], vocab, limits)
        return lambda: _filled(_loomlm_matcher(guide(), self.words))

    def status(self, exc: BaseException) -> str:
        from loomlm.grammars import GrammarError, GrammarTimeoutError

        if isinstance(exc, GrammarError):
            return "timeout" if isinstance(exc, GrammarTimeoutError) else "error"
        return "memory" if isinstance(exc, MemoryError) else "bug"


def _xgrammar_matcher(compiled: Any, vocab_size: int, eos: int) -> Matcher:
    import xgrammar

    m, tensor = xgrammar.GrammarMatcher(compiled), xgrammar.allocate_token_bitmask(1, vocab_size)
    fill, accept = m.fill_next_token_bitmask, m.accept_token
    end = lambda: bool(accept(eos)) and bool(m.is_terminated())
    fresh = lambda: _xgrammar_matcher(compiled, vocab_size, eos)
    return Matcher(tensor[0].numpy(), lambda: fill(tensor), lambda t: bool(accept(t)), end, fresh)


class XGrammar:
    """A fresh `GrammarCompiler(cache_enabled=False)` per compile (built untimed); JSON with
    `any_whitespace=False`, separators ", " / ": " and `strict_mode=False`; EBNF from its GBNF text."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos: int):
        import xgrammar

        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[eos])
        self.vocab_size, self.eos = vocab_size, eos

    def prepare(self, task: dict[str, Any]) -> Callable[[], Matcher] | None:
        import xgrammar

        compiler = xgrammar.GrammarCompiler(self.info, cache_enabled=False)
        if task["kind"] == "json":
            text = json.dumps(task["schema"])
            build = lambda: compiler.compile_json_schema(
                text, any_whitespace=False, separators=(", ", ": "), strict_mode=False
            )
        elif task.get("gbnf"):
            build = lambda: compiler.compile_grammar(task["gbnf"])
        else:
            return None
        return lambda: _filled(_xgrammar_matcher(build(), self.vocab_size, self.eos))

    def status(self, exc: BaseException) -> str:
        return "memory" if isinstance(exc, MemoryError) else "error"


def _llguidance_matcher(m: Any, words: int, pristine: list[Any]) -> Matcher:
    buf = np.zeros(words, dtype=np.int32)
    compute, ptr, size = m.unsafe_compute_mask_ptr, buf.ctypes.data, buf.nbytes
    end = lambda: bool(m.is_accepting()) and not m.is_error()
    fresh = lambda: _llguidance_matcher(pristine[0].deep_copy(), words, pristine)
    snapshot = lambda: pristine.append(m.deep_copy())  # still at the start: a mask does not advance
    return Matcher(buf, lambda: compute(ptr, size), lambda t: bool(m.consume_token(t)), end, fresh, snapshot)


class LLGuidance:
    """`LLMatcher` over `llguidance.hf.from_tokenizer`; JSON with separators ", " / ": ", no flexible
    whitespace and `lenient=True` (unknown keywords ignored, as loomlm's strict=False); lark as is."""

    OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False, "lenient": True}

    def __init__(self, tokenizer: Any, vocab_size: int, eos: int):
        import llguidance.hf

        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        self.words = (vocab_size + 31) // 32

    def prepare(self, task: dict[str, Any]) -> Callable[[], Matcher]:
        import llguidance

        def build() -> Matcher:
            if task["kind"] == "json":
                grammar = llguidance.LLMatcher.grammar_from_json_schema(task["schema"], overrides=self.OPTIONS)
            else:
                grammar = llguidance.grammar_from("lark", task["lark"])
            m = llguidance.LLMatcher(self.tok, grammar, log_level=0)
            matcher = _filled(_llguidance_matcher(m, self.words, []))
            if m.is_error():  # llguidance reports a bad grammar as an error state, never raises
                raise CompileFailure(m.get_error())
            return matcher

        return build

    def status(self, exc: BaseException) -> str:
        return "memory" if isinstance(exc, MemoryError) else "error"


ADAPTERS = {"loomlm": Loomlm, "xgrammar": XGrammar, "llguidance": LLGuidance}


def version_of(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "source tree" if name == "loomlm" else "not installed"


# ---- the child ------------------------------------------------------------------------------------------


def _limit_memory(extra_gb: float) -> None:
    """Address-space limit: what the child maps now plus `extra_gb` (0: none)."""
    if extra_gb > 0:
        with open("/proc/self/statm", encoding="ascii") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (mapped + int(extra_gb * 2**30), hard))


def _failure(status: str, exc: BaseException) -> dict[str, Any]:
    out = {"status": status, "message": f"{type(exc).__name__}: {exc}"}
    if status == "bug":
        out["trace"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    return out


def _walk(matcher: Matcher, tokens: list[int], eos: int, timed: array | None, deadline: float) -> dict[str, Any]:
    """One document: fill (timed into `timed`, for valid documents) and advance per token, then the
    end. Outcome "accepted", "rejected" (a token refused, `at`; or no EOS at the end) or "timeout"."""
    clock, mismatches, allowed = time.perf_counter_ns, 0, True
    for i, token in enumerate(tokens):
        if timed is not None:
            t0 = clock()
            matcher.fill()
            timed.append(clock() - t0)
            allowed = matcher.allows(token)
        ok = matcher.advance(token)
        mismatches += timed is not None and allowed != ok
        if not ok:
            return {"outcome": "rejected", "steps": i + 1, "mismatches": mismatches, "at": i}
        if time.perf_counter() > deadline:
            return {"outcome": "timeout", "steps": i + 1, "mismatches": mismatches}
    if timed is not None:
        t0 = clock()
        matcher.fill()
        timed.append(clock() - t0)
        allowed = matcher.allows(eos)
    end = matcher.end()
    mismatches += timed is not None and allowed != end
    return {"outcome": "accepted" if end else "rejected", "steps": len(tokens) + 1, "mismatches": mismatches}


def _serve(adapter: Any, task: dict[str, Any], eos: int, conn: Any) -> None:
    try:
        build = adapter.prepare(task)
    except Exception as exc:
        return conn.send(("compiled", _failure(adapter.status(exc), exc)))
    if build is None:
        return conn.send(("compiled", {"status": "n/a"}))
    gc.collect()
    start = time.perf_counter()
    try:
        matcher = build()
    except CompileFailure as exc:
        return conn.send(("compiled", {"status": "error", "message": str(exc)}))
    except Exception as exc:
        return conn.send(("compiled", _failure(adapter.status(exc), exc)))
    ms = (time.perf_counter() - start) * 1e3
    if ms > task["budget"] * 1e3:
        return conn.send(("compiled", {"status": "timeout", "ttfm_ms": ms, "message": "compile overran the budget"}))
    matcher.snapshot()
    conn.send(("compiled", {"status": "covered", "ttfm_ms": ms}))
    timed, walker = array("q"), matcher
    for kind in ("valid", "invalid"):
        for tokens in task[kind]:
            deadline = time.perf_counter() + task["doc_budget"]
            gc.disable()
            try:
                doc = _walk(walker, tokens, eos, timed if kind == "valid" else None, deadline)
            except Exception as exc:
                failure = _failure(adapter.status(exc), exc)
                doc = {"outcome": "bug" if failure["status"] == "bug" else "error", **failure}
            finally:
                gc.enable()
            conn.send(("doc", {"kind": kind, **doc}))
            walker = matcher.fresh()
    conn.send(("done", {"mask_ns": timed.tobytes()}))


def worker_main(conn: Any, name: str, tokenizer_dir: str, vocab_size: int, eos: int, memory_gb: float) -> None:
    if name != "loomlm":  # the peers' native warnings (XGrammar logs every oneOf it relaxes)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # the parent's `save_pretrained`
        if (len(tokenizer), tokenizer.eos_token_id) != (vocab_size, eos):
            raise RuntimeError(f"the saved tokenizer differs: {len(tokenizer)} tokens, EOS {tokenizer.eos_token_id}")
        start = time.perf_counter()
        adapter = ADAPTERS[name](tokenizer, vocab_size, eos)
        setup = time.perf_counter() - start
        adapter.prepare(WARMUP)()
        warmup = time.perf_counter() - start - setup
    except Exception as exc:
        return conn.send(("fatal", _failure("bug", exc)["trace"]))
    # What a dedicated server process does after start-up (vLLM's engine core does the same): the
    # long-lived set-up objects (tokenizer, vocabulary tables) leave the cyclic GC's generations, so a
    # collection during a compile scans the compile's own objects only. Every library's worker alike.
    gc.collect()
    gc.freeze()
    _limit_memory(memory_gb)
    conn.send(("ready", {"setup_ms": setup * 1e3, "warmup_ms": warmup * 1e3, "version": version_of(name)}))
    while (task := conn.recv()) is not None:
        _serve(adapter, task, eos, conn)


# ---- the parent's handle ---------------------------------------------------------------------------------


class Worker:
    """One library's child process; `run(task)` returns its result, killing and restarting the child
    when it overruns (see the module docstring)."""

    def __init__(self, name: str, tokenizer_dir: str, vocab_size: int, eos: int, memory_gb: float, grace: float):
        self.name, self.grace = name, grace
        self.args = (name, tokenizer_dir, vocab_size, eos, memory_gb)
        self.ctx = multiprocessing.get_context("spawn")
        self.info: dict[str, Any] | None = None
        self.restarts = 0
        self.proc: Any = None
        self._start()

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=worker_main, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        msg = self._recv(300.0)
        if msg is None or msg[0] != "ready":
            self.stop()
            raise RuntimeError(f"{self.name} worker did not start: {msg[1] if msg else 'no answer in 300 s'}")
        self.info = self.info or msg[1]

    def _recv(self, timeout: float) -> tuple[str, Any] | None:
        try:
            return self.conn.recv() if self.conn.poll(timeout) else None
        except (EOFError, OSError):
            return ("crash", f"worker exited (code {self.proc.exitcode if self.proc else '?'})")

    def _restart(self, kill: bool = True) -> None:
        self.stop(kill)
        self.restarts += 1
        self._start()

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        self.conn.send(task)
        msg = self._recv(task["budget"] + self.grace)
        if msg is None or msg[0] == "crash":
            killed = msg is None
            if not killed:
                self.proc.join(5)
            why = f"killed after {task['budget'] + self.grace:g} s" if killed else msg[1]
            self._restart(kill=killed)
            return {"status": "timeout" if killed else "crash", "killed": killed, "message": why, "docs": []}
        result: dict[str, Any] = {**msg[1], "killed": False, "docs": []}
        if result["status"] != "covered":
            return result
        for _ in range(len(task["valid"]) + len(task["invalid"])):
            msg = self._recv(task["doc_budget"] + self.grace)
            if msg is None or msg[0] != "doc":
                return self._abandon(task, result, msg)
            result["docs"].append(msg[1])
        msg = self._recv(60.0)
        if msg is None or msg[0] != "done":
            return self._abandon(task, result, msg)
        result["mask_ns"] = np.frombuffer(msg[1]["mask_ns"], dtype=np.int64)
        return result

    def _abandon(self, task: dict[str, Any], result: dict[str, Any], msg: Any) -> dict[str, Any]:
        """The child hung (`msg` None) or died mid-walk: restart it; the documents it did not walk are
        "timeout" (or "crash"), and the task's timed mask steps are lost."""
        self._restart(kill=True)
        outcome, why = (
            ("timeout", f"killed after {task['doc_budget'] + self.grace:g} s")
            if msg is None
            else ("crash", str(msg[1]))
        )
        kinds = ["valid"] * len(task["valid"]) + ["invalid"] * len(task["invalid"])
        result["docs"] += [{"kind": k, "outcome": outcome, "message": why} for k in kinds[len(result["docs"]) :]]
        result.update(walk_killed=msg is None, mask_ns=np.zeros(0, dtype=np.int64))
        return result

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.is_alive() and not kill:
                self.conn.send(None)
                self.proc.join(2)
        except (OSError, BrokenPipeError):
            pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()
        self.proc = None
