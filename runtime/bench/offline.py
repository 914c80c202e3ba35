"""`python -m loomlm.bench offline`: loomlm's offline throughput against Hugging Face transformers.

One run, one model, one set of prompts (random token ids from a seeded generator), greedy decoding
with EOS ignored so every request makes exactly `--output-len` tokens on every side:

* loomlm: a single `Engine.generate(input_ids=all prompts)` call (continuous batching);
* transformers `generate`, sequentially at batch 1 (optionally on the first K prompts only: tok/s is a
  rate, so a subset is a fair sample) and in left-padded batches of `--batch-size`.

Each side gets a short warm-up first; both use the same torch thread count. Prints a table, and with
`--json` a last line holding one JSON object with the rates, ratios and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Sequence, TypeVar

import torch

from loomlm.runtime.bench.common import resolve_target, use_threads
from loomlm.runtime.bench.report import Measurement, environment, format_table, speedup
from loomlm.runtime.config import DTYPES, LOAD_FORMATS

T = TypeVar("T")
WARMUP_TOKENS = 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench offline", description=__doc__.split("\n")[0])
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128, help="prompt length in tokens")
    p.add_argument("--output-len", type=int, default=64, help="new tokens per request")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of the padded transformers run")
    p.add_argument("--hf-sequential-prompts", type=int, default=None, metavar="K",
                   help="run transformers at batch 1 on the first K prompts only (default: all)")
    p.add_argument("--skip-hf", action="store_true", help="measure loomlm only")
    p.add_argument("--model", dest="model_path", default=None,
                   help="GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--load-format", choices=LOAD_FORMATS, default="auto",
                   help="dummy: random weights of the model's shape on both sides")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-running-requests", type=int, default=128, help="loomlm's batch limit")
    p.add_argument("--seed", type=int, default=0, help="seeds the prompts and dummy weights")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for name in ("num_prompts", "input_len", "output_len", "batch_size", "max_running_requests"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    for name in ("hf_sequential_prompts", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")


def make_prompts(num: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """`num` prompts of `length` token ids drawn uniformly from the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num, length), generator=gen).tolist()


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _log(message: str) -> None:
    print(f"[bench offline] {message}", file=sys.stderr, flush=True)


def _measure(system: str, outputs: Sequence[Sequence[int]], wall_s: float, expected: int) -> Measurement:
    """A Measurement, after checking that every request made exactly `expected` tokens."""
    lengths = [len(o) for o in outputs]
    if any(n != expected for n in lengths):
        raise RuntimeError(f"{system}: produced {lengths} tokens, expected {expected} per request")
    return Measurement(system, len(outputs), sum(lengths), wall_s)


def run_loomlm(args: argparse.Namespace, prompts: list[list[int]], threads: int,
               device: torch.device) -> tuple[Measurement, list[list[int]], dict[str, int]]:
    from loomlm.runtime.engine import Engine

    engine = Engine(model_path=args.model_path, dtype=args.dtype, load_format=args.load_format,
                    device=str(device), random_seed=args.seed,
                    cpu_threads=threads if device.type == "cpu" else None,
                    max_running_requests=args.max_running_requests,
                    max_total_tokens=len(prompts) * (args.input_len + args.output_len) + 16)
    params = {"max_new_tokens": args.output_len, "temperature": 0, "ignore_eos": True}
    try:
        engine.generate(input_ids=prompts[:2], sampling_params={**params, "max_new_tokens": WARMUP_TOKENS})
        before = engine.get_stats()
        outs, wall = _timed(lambda: engine.generate(input_ids=prompts, sampling_params=params))
        after = engine.get_stats()
    finally:
        engine.shutdown()
    outputs = [o["output_ids"] for o in outs]
    stats = {k: after[k] - before[k] for k in ("forward_passes", "extend_passes", "decode_passes")}
    stats["max_running_batch"] = after["max_running_batch"]
    return _measure("loomlm", outputs, wall, args.output_len), outputs, stats


def run_hf(args: argparse.Namespace, prompts: list[list[int]],
           device: torch.device) -> tuple[Measurement, Measurement, list[list[int]]]:
    from loomlm.runtime.bench.hf_baseline import generate_in_batches, load_hf_model
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = load_hf_model(args.model_path, args.load_format, getattr(torch, args.dtype), device, args.seed)
    m, b = args.output_len, args.batch_size
    sequential = prompts[:args.hf_sequential_prompts or len(prompts)]
    generate_in_batches(model, prompts[:1], WARMUP_TOKENS, 1)
    generate_in_batches(model, prompts[:b], WARMUP_TOKENS, b)
    _log(f"transformers sequential: {len(sequential)} prompts at batch 1")
    seq_out, seq_wall = _timed(lambda: generate_in_batches(model, sequential, m, 1))
    _log(f"transformers batched: {len(prompts)} prompts in batches of {b}")
    bat_out, bat_wall = _timed(lambda: generate_in_batches(model, prompts, m, b))
    return (_measure("hf sequential (batch 1)", seq_out, seq_wall, m),
            _measure(f"hf batched (batch {b})", bat_out, bat_wall, m), seq_out)


def _summary(args: argparse.Namespace, device: torch.device, threads: int, ours: Measurement,
             seq: Measurement | None, bat: Measurement | None, same: int | None,
             stats: dict[str, int], load_before: float) -> dict[str, Any]:
    def rate(m: Measurement | None) -> float | None:
        return None if m is None else round(m.output_tok_s, 2)

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    result: dict[str, Any] = {
        "loomlm_output_tok_s": rate(ours),
        "hf_sequential_output_tok_s": rate(seq),
        "hf_batched_output_tok_s": rate(bat),
        "ratio_vs_hf_sequential": rounded(speedup(ours, seq)),
        "ratio_vs_hf_batched": rounded(speedup(ours, bat)),
    }
    for key, m in (("loomlm", ours), ("hf_sequential", seq), ("hf_batched", bat)):
        result[f"{key}_requests"] = None if m is None else m.requests
        result[f"{key}_output_tokens"] = None if m is None else m.output_tokens
        result[f"{key}_wall_s"] = None if m is None else round(m.wall_s, 3)
    result["hf_sequential_same_tokens_as_loomlm"] = same
    result["loomlm_stats"] = stats
    result["load_average_1m_before"] = round(load_before, 2)
    result.update(
        num_prompts=args.num_prompts, input_len=args.input_len, output_len=args.output_len,
        batch_size=args.batch_size, max_running_requests=args.max_running_requests,
        model=args.model_path or "default (SmolLM2-135M-Instruct Q4_1 GGUF)", load_format=args.load_format,
        dtype=args.dtype, device=str(device), threads=threads, seed=args.seed, **environment(device))
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        device, vocab = resolve_target(args)
    except ValueError as exc:
        print(f"python -m loomlm.bench offline: {exc}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    threads = use_threads(args.threads)
    prompts = make_prompts(args.num_prompts, args.input_len, vocab, args.seed)

    _log(f"loomlm: {len(prompts)} prompts x {args.input_len} tokens -> {args.output_len} new tokens each, "
         f"{args.dtype} on {device}, {threads} threads")
    try:
        ours, our_out, stats = run_loomlm(args, prompts, threads, device)
    except ValueError as exc:   # e.g. prompt + output longer than the model's context
        print(f"python -m loomlm.bench offline: {exc}", file=sys.stderr)
        return 2
    seq = bat = None
    same = None
    if not args.skip_hf:
        seq, bat, seq_out = run_hf(args, prompts, device)
        if args.load_format != "dummy":   # dummy weights differ between the sides
            same = sum(a == b for a, b in zip(our_out, seq_out))

    rows = [m for m in (ours, seq, bat) if m is not None]
    print(format_table(rows, ours))
    print(f"every request produced exactly {args.output_len} tokens "
          f"({', '.join(f'{m.system}: {m.output_tokens}' for m in rows)})")
    if same is not None:
        print(f"greedy outputs identical to loomlm's: {same}/{seq.requests} sequential requests")
    if args.json:
        print(json.dumps(_summary(args, device, threads, ours, seq, bat, same, stats, load_before)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
