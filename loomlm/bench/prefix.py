"""`python -m loomlm.bench prefix`: what the radix prefix cache buys on a shared-prefix workload.

The workload follows SGLang's generated-shared-prefix dataset, scaled for a small CPU: `--groups`
groups of `--per-group` requests; each group has its own random `--prefix-len`-token prefix (a system
prompt, few-shot examples) and each request a random `--suffix-len`-token question after it; requests
are shuffled and sent in one `Engine.generate` call; greedy, EOS ignored, `--output-len` tokens each.

In one run, on fresh engines of the same model: the cache off (`disable_radix_cache`), then the cache
on under each `--policy`. Reported per run: wall time, output tok/s, hit rate (cached / (cached +
computed) prefill tokens), the workload's ideal hit rate (every prefix computed once), and the speedup
over the cache-off run. With `--json` the last line is one JSON object (first policy's run on top).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from loomlm.bench.common import add_model_arguments, resolve_target, use_threads
from loomlm.bench.report import environment, text_table
from loomlm.runtime.config import SCHEDULE_POLICIES

WARMUP_TOKENS = 4


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    groups: int
    per_group: int
    prefix_len: int
    suffix_len: int

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def ideal_hit_rate(self) -> float:
        """Every group prefix computed once and hit by the group's other requests."""
        return self.groups * (self.per_group - 1) * self.prefix_len / self.prompt_tokens


def make_workload(
    groups: int, per_group: int, prefix_len: int, suffix_len: int, vocab_size: int, seed: int
) -> Workload:
    rng = random.Random(seed)
    # Token ids past the first few hundred: avoids special tokens of typical vocabularies.
    low = min(1000, vocab_size // 4)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(low, vocab_size) for _ in range(n)]

    prompts = []
    for _ in range(groups):
        prefix = tokens(prefix_len)
        prompts += [prefix + tokens(suffix_len) for _ in range(per_group)]
    rng.shuffle(prompts)
    return Workload(prompts, groups, per_group, prefix_len, suffix_len)


@dataclass(frozen=True)
class RunResult:
    name: str
    wall_s: float
    output_tokens: int
    cached_tokens: int
    computed_prefill_tokens: int
    outputs: list[list[int]]
    stats: dict[str, Any]

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def hit_rate(self) -> float:
        total = self.cached_tokens + self.computed_prefill_tokens
        return self.cached_tokens / total if total else 0.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench prefix", description=__doc__.split("\n")[0])
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--per-group", type=int, default=16, help="requests sharing each prefix")
    p.add_argument("--prefix-len", type=int, default=1024)
    p.add_argument("--suffix-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument(
        "--policy",
        default="lpm",
        help=f"comma-separated schedule policies for the cache-on runs ({', '.join(SCHEDULE_POLICIES)})",
    )
    add_model_arguments(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-running-requests", type=int, default=128)
    p.add_argument("--chunked-prefill-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0, help="seeds the workload and dummy weights")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def _policies(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.policy.split(",") if n.strip()]
    bad = [n for n in names if n not in SCHEDULE_POLICIES]
    if not names or bad:
        raise ValueError(f"--policy takes names from {SCHEDULE_POLICIES}, got {args.policy!r}")
    return names


def _check_args(args: argparse.Namespace) -> None:
    for name in ("groups", "per_group", "prefix_len", "suffix_len", "output_len", "max_running_requests"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.threads is not None and args.threads <= 0:
        raise ValueError("--threads must be positive")


def _log(message: str) -> None:
    print(f"[bench prefix] {message}", file=sys.stderr, flush=True)


def run_engine(
    args: argparse.Namespace, work: Workload, device: torch.device, threads: int, name: str, **engine_args: Any
) -> RunResult:
    from loomlm.runtime.engine import Engine

    max_len = args.prefix_len + args.suffix_len + args.output_len
    engine = Engine(
        model_path=args.model_path,
        dtype=args.dtype,
        load_format=args.load_format,
        device=str(device),
        random_seed=args.seed,
        cpu_threads=threads if device.type == "cpu" else None,
        max_running_requests=args.max_running_requests,
        chunked_prefill_size=args.chunked_prefill_size,
        max_total_tokens=len(work.prompts) * max_len + 64,
        **engine_args,
    )
    params = {"max_new_tokens": args.output_len, "temperature": 0, "ignore_eos": True}
    try:
        warm = [p[-16:] for p in work.prompts[:2]]  # suffix tokens only: no prefix reaches the cache
        engine.generate(input_ids=warm, sampling_params={**params, "max_new_tokens": WARMUP_TOKENS})
        engine.flush_cache()
        before = engine.get_stats()
        start = time.perf_counter()
        outs = engine.generate(input_ids=work.prompts, sampling_params=params)
        wall = time.perf_counter() - start
        after = engine.get_stats()
    finally:
        engine.shutdown()
    outputs = [o["output_ids"] for o in outs]
    if any(len(o) != args.output_len for o in outputs):
        raise RuntimeError(f"{name}: a request did not produce {args.output_len} tokens")
    delta = {
        k: after[k] - before[k]
        for k in (
            "forward_passes",
            "extend_passes",
            "decode_passes",
            "computed_prefill_tokens",
            "cached_prefill_tokens",
            "retracted_requests",
            "evicted_tokens",
        )
    }
    return RunResult(
        name,
        wall,
        sum(map(len, outputs)),
        delta["cached_prefill_tokens"],
        delta["computed_prefill_tokens"],
        outputs,
        delta,
    )


def format_table(runs: list[RunResult], off: RunResult, ideal: float) -> str:
    headers = (
        "run",
        "wall s",
        "output tok/s",
        "prefill computed",
        "prefill cached",
        "hit rate",
        "hit / ideal",
        "speedup vs off",
    )
    body = [
        (
            r.name,
            f"{r.wall_s:.2f}",
            f"{r.output_tok_s:.1f}",
            str(r.computed_prefill_tokens),
            str(r.cached_tokens),
            f"{r.hit_rate:.1%}",
            f"{r.hit_rate / ideal:.1%}" if ideal else "-",
            f"{off.wall_s / r.wall_s:.2f}x",
        )
        for r in runs
    ]
    return text_table(headers, body)


def _summary(
    args: argparse.Namespace,
    work: Workload,
    off: RunResult,
    on: list[RunResult],
    device: torch.device,
    threads: int,
    load_before: float,
) -> dict[str, Any]:
    first = on[0]
    return {
        "hit_rate": round(first.hit_rate, 4),
        "ideal_hit_rate": round(work.ideal_hit_rate, 4),
        "hit_rate_of_ideal": round(first.hit_rate / work.ideal_hit_rate, 4) if work.ideal_hit_rate else None,
        "speedup": round(off.wall_s / first.wall_s, 3),
        "cached_tokens": first.cached_tokens,
        "computed_prefill_tokens": first.computed_prefill_tokens,
        "output_tok_s": round(first.output_tok_s, 2),
        "cache_off_output_tok_s": round(off.output_tok_s, 2),
        "cache_off_computed_prefill_tokens": off.computed_prefill_tokens,
        "same_outputs_as_cache_off": {r.name: sum(a == b for a, b in zip(r.outputs, off.outputs)) for r in on},
        "runs": {
            r.name: {
                "wall_s": round(r.wall_s, 3),
                "output_tok_s": round(r.output_tok_s, 2),
                "hit_rate": round(r.hit_rate, 4),
                **r.stats,
            }
            for r in [off, *on]
        },
        "requests": len(work.prompts),
        "prompt_tokens": work.prompt_tokens,
        "groups": args.groups,
        "per_group": args.per_group,
        "prefix_len": args.prefix_len,
        "suffix_len": args.suffix_len,
        "output_len": args.output_len,
        "chunked_prefill_size": args.chunked_prefill_size,
        "model": args.model_path or "default (SmolLM2-135M-Instruct Q4_1 GGUF)",
        "load_format": args.load_format,
        "dtype": args.dtype,
        "device": str(device),
        "threads": threads,
        "seed": args.seed,
        "load_average_1m_before": round(load_before, 2),
        **environment(device),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        policies = _policies(args)
        device, vocab = resolve_target(args)
    except ValueError as exc:
        print(f"python -m loomlm.bench prefix: {exc}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    threads = use_threads(args.threads)
    work = make_workload(args.groups, args.per_group, args.prefix_len, args.suffix_len, vocab, args.seed)
    _log(
        f"{len(work.prompts)} requests ({args.groups} groups x {args.per_group}), prefix {args.prefix_len} + "
        f"suffix {args.suffix_len} -> {args.output_len} new tokens, {args.dtype} on {device}, {threads} threads"
    )
    try:
        _log("cache off")
        off = run_engine(args, work, device, threads, "cache off", disable_radix_cache=True)
        on = []
        for policy in policies:
            _log(f"cache on, policy {policy}")
            on.append(run_engine(args, work, device, threads, f"cache on ({policy})", schedule_policy=policy))
    except ValueError as exc:  # e.g. prompt + output longer than the model's context
        print(f"python -m loomlm.bench prefix: {exc}", file=sys.stderr)
        return 2
    print(format_table([off, *on], off, work.ideal_hit_rate))
    print(
        f"ideal hit rate of this workload: {work.ideal_hit_rate:.1%}; greedy outputs identical to cache off: "
        + ", ".join(f"{r.name} {sum(a == b for a, b in zip(r.outputs, off.outputs))}/{len(off.outputs)}" for r in on)
    )
    if args.json:
        print(json.dumps(_summary(args, work, off, on, device, threads, load_before)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
