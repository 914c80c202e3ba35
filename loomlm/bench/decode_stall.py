"""`python -m loomlm.bench decode-stall`: how long running decodes stall while a long prompt is prefilled,
with and without mixed batches (`enable_mixed_chunk`), measured in one run.

Per setting, one engine: `--decoders` requests stream `--decode-tokens` tokens each (greedy, EOS
ignored); once each has `--warm-tokens` tokens, a `--prompt-len`-token prompt arrives (random token ids,
one output token). Without mixing the prompt is prefilled in `--chunk`-token chunks alternating with
decode steps; with it, each step that carries the decodes prefills at most `--mixed-tokens` prompt
tokens. During the prefill (from its arrival to its first token) the table reports the decoders' tokens,
their longest gap between two tokens (the stall a streaming user sees) and the ratio of the longest
gaps, and the stall in total: the window minus the time those tokens would take at the decoders' own
pace before the prompt arrived (median gap x tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from typing import Any

from loomlm.bench.report import _cpu_model, text_table


def run_setting(args: argparse.Namespace, mixed: bool) -> dict[str, Any]:
    from loomlm.runtime.engine import Engine

    engine = Engine(
        max_total_tokens=args.prompt_len + args.decoders * 400 + 256,
        chunked_prefill_size=args.chunk,
        enable_mixed_chunk=mixed,
        mixed_prefill_tokens=args.mixed_tokens,
        cpu_threads=args.threads,
    )
    rng = random.Random(0)
    vocab = engine.runner.vocab_size
    long_prompt = [rng.randrange(100, vocab) for _ in range(args.prompt_len)]
    times: list[list[float]] = [[] for _ in range(args.decoders)]
    warm = threading.Barrier(args.decoders + 1)
    params = {"max_new_tokens": args.decode_tokens, "temperature": 0, "ignore_eos": True}

    def decode(i: int) -> None:
        prompt = [rng.randrange(100, vocab) for _ in range(32)]
        for chunk in engine.generate(input_ids=prompt, sampling_params=params, stream=True):
            if chunk["output_ids"]:
                times[i].append(time.perf_counter())
                if len(times[i]) == args.warm_tokens:
                    warm.wait()

    try:
        engine.generate("Hello", {"max_new_tokens": 2})  # first-call costs out of the timings
        threads = [threading.Thread(target=decode, args=(i,)) for i in range(args.decoders)]
        for t in threads:
            t.start()
        warm.wait()
        arrived = time.perf_counter()
        engine.generate(input_ids=long_prompt, sampling_params={"max_new_tokens": 1, "ignore_eos": True})
        first_token = time.perf_counter()
        for t in threads:
            t.join()
        mixed_passes = engine.get_stats()["mixed_passes"]
    finally:
        engine.shutdown()
    pace = statistics.median(b - a for ts in times for a, b in zip(ts, ts[1:]) if b < arrived)
    inside = [[t for t in ts if arrived <= t <= first_token] for ts in times]
    gaps = [b - a for ts in times for a, b in zip(ts, ts[1:]) if b >= arrived and a <= first_token]
    window = first_token - arrived
    tokens = min(len(x) for x in inside)
    return {
        "mixed": mixed,
        "prefill_s": window,
        "decoder_tokens_during": tokens,
        "longest_gap_s": max(gaps),
        "stall_s": max(0.0, window - tokens * pace),
        "pace_s": pace,
        "mixed_passes": mixed_passes,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench decode-stall", description=__doc__.split("\n")[0])
    p.add_argument("--prompt-len", type=int, default=4000)
    p.add_argument("--chunk", type=int, default=2048, help="chunked_prefill_size (the engine's default)")
    p.add_argument("--mixed-tokens", type=int, default=512, help="mixed_prefill_tokens (the engine's default)")
    p.add_argument("--decoders", type=int, default=4)
    p.add_argument("--decode-tokens", type=int, default=200)
    p.add_argument("--warm-tokens", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load = os.getloadavg()[0]
    runs = [run_setting(args, mixed) for mixed in (False, True)]
    base = runs[0]["longest_gap_s"]
    rows = [
        [
            "mixed batches" if r["mixed"] else "separate steps",
            f"{r['prefill_s']:.2f}",
            str(r["decoder_tokens_during"]),
            f"{1000 * r['longest_gap_s']:.0f}",
            f"{base / r['longest_gap_s']:.1f}x",
            f"{r['stall_s']:.2f}",
        ]
        for r in runs
    ]
    print(f"CPU: {_cpu_model()}; load average before {load:.2f}")
    print(
        f"{args.decoders} requests decoding while a {args.prompt_len}-token prompt is prefilled (chunks of "
        f"{args.chunk}; mixed: {args.mixed_tokens} per step); decode pace before it arrived: "
        f"{1000 * runs[0]['pace_s']:.0f} / {1000 * runs[1]['pace_s']:.0f} ms per token"
    )
    headers = ["setting", "prefill s", "decoder tokens meanwhile", "longest gap ms", "gap cut", "total stall s"]
    print(text_table(headers, rows))
    if args.json:
        print(json.dumps({"runs": runs, "settings": vars(args)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
