"""`python -m loomlm.bench programs`: SGLang-paper-style programs with the radix cache on, off, and naively.

The same `@function` programs (`program_workloads.py`: 5-shot multiple choice, tree of thought, multi-turn
chat, JSON extraction) run on three backends, one after the other, in one process:

- `cache on`: `Runtime()` (the in-process engine, radix cache on), programs sent with `run_batch`
  (all programs of a workload at once; the traced constant prefix is prefilled once);
- `cache off`: `Runtime(disable_radix_cache=True)`, the same calls; the frontend's prefill calls
  (`run_batch`'s traced prefix, fork commits) compute nothing there (`LocalBackend` skips them without a
  cache);
- `naive`: `NaiveHFBackend` (`naive_hf.py`): transformers, one independent `generate` call per gen,
  one forward pass per select choice, no KV reuse, one gen at a time (`run_batch` with one thread).

Greedy everywhere; free-text gens produce exactly `--max-tokens` tokens (EOS ignored) on every backend,
so all three do the same decoding work. Jump-forward (constrained decoding) needs the cache, so both
engines run without it unless `--jump-forward` asks for it in the cache-on run: the cache is then the
only difference between the two, and fp32 greedy outputs match across all three backends.

Per workload and backend: wall time, gens, output tokens, prompt tokens computed and served from the
cache (engine counters; the naive baseline computes all of its prompts), the hit rate (cached /
(cached + computed)), and how much slower than `cache on` it was. With `--json` the last line is one
JSON object with `speedup_cache` (cache off wall / cache on wall, all workloads) and `speedup_vs_naive`
(naive wall / cache on wall). Results and how to read them: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from loomlm.bench.common import add_model_arguments
from loomlm.bench.program_workloads import (
    WORKLOAD_KEYS,
    Workload,
    chat_workload,
    few_shot_workload,
    json_workload,
    tree_of_thought_workload,
)
from loomlm.lang.backends.base import Backend, GenResult
from loomlm.lang.choices import ChoicesDecision, ChoicesMethod
from loomlm.lang.ir import LogprobRequest

BACKENDS = ("cache on", "cache off", "naive")
TARGET_CACHE, TARGET_NAIVE = 3.0, 5.0  # the targets, same run


class CountingBackend(Backend):
    """Passes every call through to `inner` and counts gens, selects, prefills and output tokens.
    (On an engine without a cache `LocalBackend.prefill` computes nothing.)"""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.chat_template = inner.chat_template
        self.gens = self.selects = self.prefills = self.output_tokens = 0
        self._lock = threading.Lock()

    def _count(self, meta: dict[str, Any]) -> None:
        with self._lock:
            self.gens += 1
            self.output_tokens += int(meta.get("completion_tokens") or 0)

    def generate(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> GenResult:
        result = self.inner.generate(prompt, sampling, logprobs)
        self._count(result.meta_info)
        return result

    def generate_stream(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> Iterator[GenResult]:
        meta: dict[str, Any] = {}
        for chunk in self.inner.generate_stream(prompt, sampling, logprobs):
            meta = chunk.meta_info
            yield chunk
        self._count(meta)

    def select(self, prompt: str, choices: Sequence[str], method: ChoicesMethod) -> ChoicesDecision:
        with self._lock:
            self.selects += 1
        return self.inner.select(prompt, choices, method)

    def prefill(self, prompt: str) -> None:
        with self._lock:
            self.prefills += 1
        self.inner.prefill(prompt)


@dataclass
class RunStats:
    backend: str
    workload: str
    programs: int
    wall_s: float
    gens: int
    selects: int
    prefill_calls: int  # frontend prefills (run_batch prefix, fork commits)
    output_tokens: int
    prefill_computed: int
    prefill_cached: int
    outputs: list[list[str]] = field(repr=False)  # per program: its text and its fork branches' texts
    quality: dict[str, Any]

    @property
    def hit_rate(self) -> float:
        total = self.prefill_computed + self.prefill_cached
        return self.prefill_cached / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 3),
            "programs": self.programs,
            "gens": self.gens,
            "selects": self.selects,
            "prefill_calls": self.prefill_calls,
            "output_tokens": self.output_tokens,
            "prefill_computed": self.prefill_computed,
            "prefill_cached": self.prefill_cached,
            "hit_rate": round(self.hit_rate, 4),
            **self.quality,
        }


def program_texts(state: Any) -> list[str]:
    """The text of a finished program and of every fork branch below it, breadth first (waits for all)."""
    texts, queue = [], [state.stream_executor]
    while queue:
        executor = queue.pop(0)
        executor.sync()
        if executor.error_ is not None:
            raise RuntimeError(f"a program failed: {executor.error_!r}") from executor.error_
        texts.append(executor.text_)
        queue += executor.children
    return texts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench programs", description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOAD_KEYS), help=f"comma-separated: {', '.join(WORKLOAD_KEYS)}")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per free-text gen (EOS ignored)")
    p.add_argument("--questions", type=int, default=32, help="few-shot questions")
    p.add_argument(
        "--few-shot-answer",
        choices=("gen", "select"),
        default="gen",
        help="answer by a 1-token gen (SGLang's MMLU benchmark) or a select over A-D",
    )
    p.add_argument("--tot-problems", type=int, default=6, help="tree-of-thought problems (8 leaves each)")
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--documents", type=int, default=8, help="JSON extraction documents")
    p.add_argument("--json-max-tokens", type=int, default=96, help="cap on a JSON record's tokens")
    p.add_argument("--skip-naive", action="store_true", help="no transformers baseline")
    p.add_argument(
        "--jump-forward",
        action="store_true",
        help="constrained-decoding jump-forward in the cache-on run (off by default: it needs the "
        "cache, so it would be a second difference between the two runs)",
    )
    add_model_arguments(p, load_formats=("auto", "gguf", "safetensors"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-total-tokens", type=int, default=32768, help="KV pool of each engine, in tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def make_workloads(args: argparse.Namespace) -> list[Workload]:
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    bad = [k for k in keys if k not in WORKLOAD_KEYS]
    if not keys or bad or len(set(keys)) != len(keys):
        raise ValueError(f"--workloads takes distinct names from {', '.join(WORKLOAD_KEYS)}, got {args.workloads!r}")
    for name in ("max_tokens", "json_max_tokens", "max_total_tokens"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.threads is not None and args.threads <= 0:
        raise ValueError("--threads must be positive")
    makers = {
        "few-shot": lambda: few_shot_workload(args.questions, args.few_shot_answer),
        "tot": lambda: tree_of_thought_workload(args.tot_problems),
        "chat": lambda: chat_workload(args.conversations, args.turns),
        "json": lambda: json_workload(args.documents, args.json_max_tokens),
    }
    return [makers[k]() for k in keys]


_START = time.perf_counter()


def _log(message: str) -> None:
    print(f"[bench programs {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def make_backend(kind: str, args: argparse.Namespace, device: Any, threads: int) -> Backend:
    if kind == "naive":  # the last backend: this thread's OpenMP pool slows no engine (compute_thread.py)
        import torch

        from loomlm.bench.naive_hf import NaiveHFBackend

        torch.set_num_threads(threads)

        return NaiveHFBackend(args.model_path, args.load_format, args.dtype, str(device), args.seed)
    from loomlm.lang.backends.local import Runtime

    # Jump-forward needs the cache, so it is off in both engines unless asked for (then the cache-on
    # run has it): the radix cache is the one difference between the two runs.
    return Runtime(
        args.model_path,
        dtype=args.dtype,
        load_format=args.load_format,
        device=str(device),
        random_seed=args.seed,
        cpu_threads=threads if device.type == "cpu" else None,
        max_total_tokens=args.max_total_tokens,
        disable_radix_cache=kind == "cache off",
        disable_jump_forward=not args.jump_forward,
    )


def _prefill_counters(backend: Backend) -> tuple[int, int]:
    """(computed, cached) prompt tokens so far: the engine's counters, or all the baseline's prompts."""
    engine = getattr(backend, "engine", None)
    if engine is None:
        return backend.counts.prefill_tokens, 0  # type: ignore[attr-defined]
    stats = engine.get_stats()
    return stats["computed_prefill_tokens"], stats["cached_prefill_tokens"]


def _warm_up(backend: Backend, workloads: Sequence[Workload]) -> None:
    """Short untimed gens (first-call costs and grammar compiles out of the timings), then an empty cache."""
    for extra in [{}] + [w for workload in workloads for w in workload.warmup]:
        backend.generate("Hello, how are", {"max_new_tokens": 4, "temperature": 0.0, **extra}, LogprobRequest())
    engine = getattr(backend, "engine", None)
    if engine is not None:
        engine.flush_cache()


def run_workload(workload: Workload, backend: Backend, kind: str, sampling: dict[str, Any]) -> RunStats:
    engine = getattr(backend, "engine", None)
    if engine is not None and not engine.flush_cache():  # each workload starts from an empty cache
        raise RuntimeError("the engine is not idle between workloads")
    counting = CountingBackend(backend)
    before = _prefill_counters(backend)
    start = time.perf_counter()
    states = workload.program.run_batch(
        workload.arguments, backend=counting, num_threads=1 if kind == "naive" else "auto", **sampling
    )
    outputs = [program_texts(state) for state in states]  # every branch finished: part of the time
    wall = time.perf_counter() - start
    after = _prefill_counters(backend)
    quality = workload.score(states) if workload.score else {}
    return RunStats(
        kind,
        workload.key,
        len(states),
        wall,
        counting.gens,
        counting.selects,
        counting.prefills,
        counting.output_tokens,
        after[0] - before[0],
        after[1] - before[1],
        outputs,
        quality,
    )


def _same(a: RunStats, b: RunStats) -> int:
    return sum(x == y for x, y in zip(a.outputs, b.outputs))


def _total(kind: str, runs: list[RunStats]) -> RunStats:
    return RunStats(
        kind,
        "all",
        sum(r.programs for r in runs),
        sum(r.wall_s for r in runs),
        sum(r.gens for r in runs),
        sum(r.selects for r in runs),
        sum(r.prefill_calls for r in runs),
        sum(r.output_tokens for r in runs),
        sum(r.prefill_computed for r in runs),
        sum(r.prefill_cached for r in runs),
        [o for r in runs for o in r.outputs],
        {},
    )


def format_table(rows: list[tuple[str, RunStats, RunStats]]) -> str:
    """rows: (workload label, run, the cache-on run of the same workload)."""
    from loomlm.bench.report import text_table

    headers = (
        "workload",
        "backend",
        "programs",
        "gens/selects",
        "output tok",
        "prefill computed",
        "prefill cached",
        "hit rate",
        "wall s",
        "wall / cache on",
    )
    body = [
        (
            label,
            r.backend,
            str(r.programs),
            str(r.gens + r.selects),
            str(r.output_tokens),
            str(r.prefill_computed),
            str(r.prefill_cached),
            f"{r.hit_rate:.1%}",
            f"{r.wall_s:.2f}",
            f"{r.wall_s / on.wall_s:.2f}x",
        )
        for label, r, on in rows
    ]
    return text_table(headers, body)


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return f"{value:.2f}x (target >= {target:.0f}x: {'met' if value >= target else 'NOT met'})"


def _ratio(runs: dict[str, RunStats], kind: str) -> float | None:
    """`kind`'s wall time over the cache-on run's (how many times faster the cache-on run was)."""
    return runs[kind].wall_s / runs["cache on"].wall_s if kind in runs else None


def _report(
    args: argparse.Namespace,
    workloads: list[Workload],
    runs: dict[str, dict[str, RunStats]],
    totals: dict[str, RunStats],
) -> list[str]:
    """The lines under the table."""
    kinds = list(totals)
    same = {kind: _same(totals["cache on"], totals[kind]) for kind in kinds if kind != "cache on"}
    lines = [
        f"output lengths: free-text gens exactly {args.max_tokens} tokens each (EOS ignored) on every backend; "
        f"few-shot answers: {'1 token' if args.few_shot_answer == 'gen' else 'a select, no tokens'}; JSON "
        f"records end where the object closes (at most {args.json_max_tokens} tokens)",
        f"frontend prefill calls (run_batch prefix, fork commits): {totals['cache on'].prefill_calls}, sent to "
        f"the cache-on engine only (cache off: skipped by LocalBackend, there is no cache to fill; naive: a no-op)",
        "programs whose text (with every fork branch) equals cache on's: "
        + ", ".join(f"{kind} {n}/{len(totals['cache on'].outputs)}" for kind, n in same.items()),
    ]
    for w in workloads:
        if w.score:
            lines.append(
                f"{w.title} quality: "
                + ", ".join(
                    f"{kind} " + " ".join(f"{k}={v}" for k, v in runs[w.key][kind].quality.items()) for kind in kinds
                )
            )
    lines.append(
        f"speedup, all workloads: cache on vs off {_verdict(_ratio(totals, 'cache off'), TARGET_CACHE)}; "
        f"cache on vs naive transformers {_verdict(_ratio(totals, 'naive'), TARGET_NAIVE)}"
    )
    return lines


def _summary(
    args: argparse.Namespace,
    workloads: list[Workload],
    runs: dict[str, dict[str, RunStats]],
    totals: dict[str, RunStats],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The `--json` object."""

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    speedup_cache, speedup_naive = _ratio(totals, "cache off"), _ratio(totals, "naive")
    on = totals["cache on"]
    per_workload = {}
    for w in workloads:
        by_kind = runs[w.key]
        per_workload[w.key] = {
            "shape": w.shape,
            **{kind: r.as_dict() for kind, r in by_kind.items()},
            "identical_outputs_vs_cache_on": {
                kind: _same(by_kind["cache on"], r) for kind, r in by_kind.items() if kind != "cache on"
            },
            "speedup_cache": rounded(_ratio(by_kind, "cache off")),
            "speedup_vs_naive": rounded(_ratio(by_kind, "naive")),
        }
    return {
        "speedup_cache": rounded(speedup_cache),
        "speedup_vs_naive": rounded(speedup_naive),
        "targets_met": {
            "cache": speedup_cache >= TARGET_CACHE,
            "naive": None if speedup_naive is None else speedup_naive >= TARGET_NAIVE,
        },
        "hit_rate": round(on.hit_rate, 4),
        "programs": len(on.outputs),
        "identical_outputs_vs_cache_on": {kind: _same(on, t) for kind, t in totals.items() if kind != "cache on"},
        "totals": {kind: t.as_dict() for kind, t in totals.items()},
        "workloads": per_workload,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "model": args.model_path or "default (SmolLM2-135M-Instruct Q4_1 GGUF)",
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    from loomlm.bench.common import use_threads
    from loomlm.bench.report import environment
    from loomlm.runtime.config import EngineConfig

    args = build_parser().parse_args(argv)
    try:
        workloads = make_workloads(args)
        device = EngineConfig(device=args.device).resolved_device()
    except ValueError as exc:
        print(f"python -m loomlm.bench programs: {exc}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    threads = use_threads(args.threads)
    sampling = {"temperature": 0.0, "max_new_tokens": args.max_tokens, "ignore_eos": True}
    kinds = [k for k in BACKENDS if not (k == "naive" and args.skip_naive)]
    runs: dict[str, dict[str, RunStats]] = {w.key: {} for w in workloads}
    for kind in kinds:
        _log(f"{kind}: loading ({args.dtype} on {device}, {threads} threads)")
        backend = make_backend(kind, args, device, threads)
        try:
            _warm_up(backend, workloads)
            for workload in workloads:
                _log(f"{kind}: {workload.title}: {workload.shape}")
                runs[workload.key][kind] = run_workload(workload, backend, kind, sampling)
                _log(f"{kind}: {workload.title}: {runs[workload.key][kind].wall_s:.2f} s")
        finally:
            backend.shutdown()
    totals = {kind: _total(kind, [runs[w.key][kind] for w in workloads]) for kind in kinds}
    rows = [(w.title, runs[w.key][kind], runs[w.key]["cache on"]) for w in workloads for kind in kinds]
    rows += [("all workloads", totals[kind], totals["cache on"]) for kind in kinds]
    print(format_table(rows))
    for line in _report(args, workloads, runs, totals):
        print(line)
    env = environment(device)
    print(
        f"environment: {env['date']}, {env['hardware']}, {args.dtype}, {threads} threads, torch {env['torch']}, "
        f"transformers {env['transformers']}, 1-minute load {load_before:.2f} before / "
        f"{env['load_average_1m_after']:.2f} after (other work on the machine skews timings)"
    )
    if args.json:
        extra = {"device": str(device), "threads": threads, "load_average_1m_before": round(load_before, 2), **env}
        print(json.dumps(_summary(args, workloads, runs, totals, extra)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
