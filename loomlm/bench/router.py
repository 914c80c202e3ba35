"""`python -m loomlm.bench router`: loomlm replicas behind the SGLang router, measured in one run.

1. Routing policies. `--workers` workers behind the router (`loomlm serve --dp-size W --router-policy
   P`, one run per policy, fresh processes each), a shared-prefix workload: `--groups` long prefixes,
   `--per-group` questions each, sent interleaved (g0, g1, ..., g0, ...) with at most `--concurrency` in
   flight, greedy `/generate`. Reported per policy: wall time, the workers' cache hit rate (cached /
   (cached + computed) prompt tokens, read from each worker's `/get_load` before and after) and whether
   every answer equals the other policies'.
2. Replicas. `bench serving`'s client (random prompts, all at once, streamed completions) against one
   server (`--dp-size 1`: all cores, no router) and against `--workers` workers behind the router:
   output-token throughput and the ratio.

Every process runs on this machine (the client too), so the figures are for the cores it has.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from loomlm.bench import serving
from loomlm.bench.report import _cpu_model, text_table
from loomlm.bench.serving_datasets import make_prompts

_LISTENING = re.compile(r"listening on (http://\S+)")
_WORKER = re.compile(r"worker \d+: pid \d+, (http://\S+),")
_START_S = 600.0


@contextlib.contextmanager
def launched(flags: list[str]) -> Iterator[tuple[str, list[str]]]:
    """`python -m loomlm.runtime.server FLAGS --port 0` until the block ends: (its URL, worker URLs)."""
    command = [sys.executable, "-m", "loomlm.runtime.server", "--port", "0", *flags]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    found: dict[str, Any] = {"workers": []}
    ready = threading.Event()
    log: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            log.append(line)
            if worker := _WORKER.search(line):
                found["workers"].append(worker.group(1))
            if (url := _LISTENING.search(line)) and "[worker" not in line:
                found["url"] = url.group(1)
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(_START_S) or "url" not in found:
            raise RuntimeError("the server did not start:\n" + "".join(log[-30:]))
        yield found["url"], found["workers"] or [found["url"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)


def _cache_counts(workers: list[str]) -> tuple[int, int]:
    """(cached, computed) prompt tokens so far, summed over the workers."""
    cached = computed = 0
    for url in workers:
        load = httpx.get(f"{url}/get_load", timeout=30).json()[0]
        cached += load["cached_prefill_tokens"]
        computed += load["computed_prefill_tokens"]
    return cached, computed


def shared_prefix_texts(groups: int, per_group: int, prefix_words: int) -> list[str]:
    """Interleaved: every group's question i before any group's question i + 1."""
    prompts = make_prompts("random", groups, input_len=prefix_words, prefix_len=1, num_groups=1, seed=7)
    prefixes = [f"Context {g}: {p.text}." for g, p in enumerate(prompts)]
    return [f"{prefixes[g]}\n\nQuestion {i}: what does item {i} say?" for i in range(per_group) for g in range(groups)]


async def _send_all(url: str, texts: list[str], output_len: int, concurrency: int) -> list[str]:
    gate = asyncio.Semaphore(concurrency)
    params = {"temperature": 0, "max_new_tokens": output_len}
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:

        async def one(text: str) -> str:
            async with gate:
                answer = await http.post("/generate", json={"text": text, "sampling_params": params})
                answer.raise_for_status()
                return answer.json()["text"]

        return list(await asyncio.gather(*(one(t) for t in texts)))


def run_policy(args: argparse.Namespace, policy: str, texts: list[str]) -> dict[str, Any]:
    flags = ["--dp-size", str(args.workers), "--router-policy", policy, "--max-total-tokens", str(args.kv_tokens)]
    with launched(flags) as (url, workers):
        asyncio.run(_send_all(url, texts[: args.groups], 2, args.concurrency))  # warm-up: one per group
        for worker in workers:
            httpx.post(f"{worker}/flush_cache", timeout=30).raise_for_status()
        before = _cache_counts(workers)
        start = time.perf_counter()
        outputs = asyncio.run(_send_all(url, texts, args.output_len, args.concurrency))
        wall = time.perf_counter() - start
        after = _cache_counts(workers)
    cached, computed = after[0] - before[0], after[1] - before[1]
    return {"policy": policy, "wall_s": wall, "hit_rate": cached / max(1, cached + computed), "outputs": outputs}


def run_serving(args: argparse.Namespace, dp_size: int) -> dict[str, Any]:
    flags = ["--dp-size", str(dp_size), "--max-total-tokens", str(args.kv_tokens)]
    prompts = make_prompts(
        "random", args.serving_prompts, input_len=args.serving_input_len, prefix_len=1, num_groups=1, seed=0
    )
    with launched(flags) as (url, _workers):
        client_args = serving.build_parser().parse_args(
            ["--base-url", url, "--output-len", str(args.serving_output_len), "--ignore-eos"]
        )
        run = asyncio.run(serving.benchmark(client_args, prompts))
    metrics = serving.compute_metrics(run.results, run.duration)
    summary = metrics.summary()
    return {"workers": dp_size, **{k: summary[k] for k in ("output_throughput", "duration", "completed", "failed")}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench router", description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--groups", type=int, default=5, help="shared prefixes (odd: round robin then alternates workers)")
    p.add_argument("--per-group", type=int, default=6, help="questions per prefix")
    p.add_argument("--prefix-words", type=int, default=800)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4, help="policy workload: requests in flight")
    p.add_argument("--serving-prompts", type=int, default=32)
    p.add_argument("--serving-input-len", type=int, default=128, help="words per prompt")
    p.add_argument("--serving-output-len", type=int, default=32)
    p.add_argument("--kv-tokens", type=int, default=20000, help="each worker's --max-total-tokens")
    p.add_argument("--skip-serving", action="store_true", help="only the routing policies")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load_before = os.getloadavg()
    texts = shared_prefix_texts(args.groups, args.per_group, args.prefix_words)
    policies = [run_policy(args, p, texts) for p in ("round_robin", "power_of_two", "cache_aware")]
    same = all(p["outputs"] == policies[0]["outputs"] for p in policies)
    rr = policies[0]["wall_s"]
    rows = [
        [p["policy"], f"{p['wall_s']:.2f}", f"{100 * p['hit_rate']:.1f}%", f"{rr / p['wall_s']:.2f}x"] for p in policies
    ]
    print(f"CPU: {_cpu_model()}, {os.cpu_count()} cores; load average before {load_before[0]:.2f}")
    print(
        f"\n{args.workers} workers behind the SGLang router: {args.groups} prefixes x {args.per_group} questions "
        f"({args.prefix_words} words each prefix), interleaved, {args.concurrency} in flight, "
        f"{args.output_len} tokens each; greedy outputs identical across policies: {'yes' if same else 'NO'}"
    )
    print(text_table(["policy", "wall s", "cache hit rate", "speed vs round_robin"], rows))
    result: dict[str, Any] = {"policies": [{k: v for k, v in p.items() if k != "outputs"} for p in policies]}
    result["identical_outputs"] = same
    if not args.skip_serving:
        runs = [run_serving(args, 1), run_serving(args, args.workers)]
        base = runs[0]["output_throughput"] or math.nan
        print(
            f"\nbench serving: {args.serving_prompts} random prompts x {args.serving_input_len} words, "
            f"{args.serving_output_len} tokens each, all at once"
        )
        table = [
            [
                "1 server, no router" if r["workers"] == 1 else f"{r['workers']} workers + router",
                f"{r['output_throughput']:.1f}",
                f"{r['duration']:.2f}",
                f"{r['output_throughput'] / base:.2f}x",
            ]
            for r in runs
        ]
        print(text_table(["setup", "output tok/s", "wall s", "ratio"], table))
        result["serving"] = runs
    print(f"load average after {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(result))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
