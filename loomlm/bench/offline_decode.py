"""Decode sweep of `python -m loomlm.bench offline`: decode tok/s at several batch sizes, loomlm against
Hugging Face transformers on the same device, model shape, dtype and prompts.

For each batch size b (`--decode-batch-sizes`, default 1,16,64,256 on CUDA and off on CPU), both sides get
the same b prompts of `--decode-input-len` random token ids (equal lengths, so transformers needs no
padding) and decode greedily with EOS ignored:

* loomlm: one `Engine.generate(input_ids=<b prompts>)` call, on an engine with max_running_requests >= b
  (so all b decode together), its prefix cache flushed before every timed call;
* transformers: one `model.generate` call on the b prompts as one batch.

Decode tok/s is the same on both sides: every timed run is made twice, once with N = `--decode-output-len`
new tokens per request and once with 1 (prefill plus the first token only), and

    decode tok/s = b * (N - 1) / (T(N) - T(1))

where T(n) is the wall time of the generate call; subtracting the prefill-only run leaves the N - 1
decode steps. On CUDA the clock is read after `torch.cuda.synchronize()`. Each side first runs a short
warm-up generate at the same batch size (compiles kernels, captures nothing new, sizes allocators).
Also reported: end-to-end output tok/s, b * N / T(N).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from loomlm.bench.report import text_table

T = TypeVar("T")
WARMUP_TOKENS = 4
CUDA_DEFAULT_SIZES = (1, 16, 64, 256)


def log(message: str) -> None:
    print(f"[bench offline] {message}", file=sys.stderr, flush=True)


def make_prompts(num: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """`num` prompts of `length` token ids drawn uniformly from the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num, length), generator=gen).tolist()


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """(fn(), wall seconds), with the device idle before the clock starts and after it stops."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """ "1,16,64" -> (1, 16, 64); "off" / "none" / "" -> () (argparse type)."""
    if text.strip().lower() in ("", "off", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if any(b <= 0 for b in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decode-batch-sizes",
        type=parse_batch_sizes,
        default=None,
        metavar="B1,B2,...",
        help="decode sweep batch sizes (default: 1,16,64,256 on CUDA, off on CPU; 'off' disables)",
    )
    p.add_argument("--decode-input-len", type=int, default=32, help="prompt length of the decode sweep")
    p.add_argument("--decode-output-len", type=int, default=128, help="new tokens per request in the sweep")
    p.add_argument("--sweep-only", action="store_true", help="run the decode sweep only, not the main comparison")


def sweep_sizes(args: argparse.Namespace, device: torch.device) -> tuple[int, ...]:
    if args.decode_batch_sizes is not None:
        return args.decode_batch_sizes
    return CUDA_DEFAULT_SIZES if device.type == "cuda" else ()


def engine_kwargs(args: argparse.Namespace, device: torch.device, threads: int) -> dict[str, Any]:
    """Engine arguments shared by every loomlm run."""
    return dict(
        model_path=args.model_path,
        dtype=args.dtype,
        load_format=args.load_format,
        device=str(device),
        random_seed=args.seed,
        # tensor parallel on CPU: the ranks share the threads
        cpu_threads=max(1, threads // args.tp_size) if device.type == "cpu" else None,
        tp_size=args.tp_size,
        attention_backend=args.attention_backend,
        disable_cuda_graph=args.disable_cuda_graph,
        json_model_override_args=args.json_model_override_args,
        cpu_linear=args.cpu_linear,
        quantization=getattr(args, "quantization", None),
    )


def _prompts_for(args: argparse.Namespace, batch: int, vocab: int) -> list[list[int]]:
    return make_prompts(batch, args.decode_input_len, vocab, args.seed + 1000 + batch)


def _check(system: str, outputs: Sequence[Sequence[int]], batch: int, expected: int) -> int:
    lengths = [len(o) for o in outputs]
    if len(lengths) != batch or any(n != expected for n in lengths):
        raise RuntimeError(f"{system}: produced {lengths} tokens, expected {batch} x {expected}")
    return sum(lengths)


def run_loomlm_sweep(
    args: argparse.Namespace, device: torch.device, threads: int, vocab: int, sizes: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """Per batch size: wall times of the N-token and 1-token runs, tokens and engine step counts."""
    from loomlm.runtime.engine import Engine

    n = args.decode_output_len
    engine = Engine(
        **engine_kwargs(args, device, threads),
        max_running_requests=max(sizes),
        max_total_tokens=max(sizes) * (args.decode_input_len + n) + 16,
    )
    params = {"temperature": 0, "ignore_eos": True}
    out: dict[int, dict[str, Any]] = {}

    def generate(prompts: list[list[int]], tokens: int) -> tuple[list[list[int]], float]:
        if not engine.flush_cache():
            raise RuntimeError("loomlm: could not flush the prefix cache (engine not idle)")
        outs, wall = timed(
            lambda: engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": tokens}), device
        )
        return [o["output_ids"] for o in outs], wall

    try:
        for b in sizes:
            prompts = _prompts_for(args, b, vocab)
            log(f"loomlm decode sweep: batch {b}, {args.decode_input_len} -> {n} tokens")
            generate(prompts, WARMUP_TOKENS)
            first, prefill_s = generate(prompts, 1)
            before = engine.get_stats()
            full, full_s = generate(prompts, n)
            after = engine.get_stats()
            out[b] = {
                "full_s": full_s,
                "prefill_s": prefill_s,
                "output_tokens": _check("loomlm", full, b, n),
                "prefill_run_tokens": _check("loomlm", first, b, 1),
                "decode_passes": after["decode_passes"] - before["decode_passes"],
                "extend_passes": after["extend_passes"] - before["extend_passes"],
                "max_running_batch": after["max_running_batch"],
            }
            if "cuda_graph_replays" in after:
                out[b]["cuda_graph_replays"] = after["cuda_graph_replays"] - before["cuda_graph_replays"]
    finally:
        engine.shutdown()
    return out


def free_memory(device: torch.device) -> None:
    """Collect what a finished run left behind (an engine, a model) before the next one loads."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_hf_sweep(
    model: torch.nn.Module, args: argparse.Namespace, device: torch.device, vocab: int, sizes: Sequence[int]
) -> dict[int, dict[str, Any]]:
    from loomlm.bench.hf_baseline import generate_greedy

    n = args.decode_output_len
    out: dict[int, dict[str, Any]] = {}
    for b in sizes:
        prompts = _prompts_for(args, b, vocab)
        log(f"transformers decode sweep: batch {b}, {args.decode_input_len} -> {n} tokens")
        generate_greedy(model, prompts, WARMUP_TOKENS)
        first, prefill_s = timed(lambda p=prompts: generate_greedy(model, p, 1), device)
        full, full_s = timed(lambda p=prompts: generate_greedy(model, p, n), device)
        out[b] = {
            "full_s": full_s,
            "prefill_s": prefill_s,
            "output_tokens": _check("transformers", full, b, n),
            "prefill_run_tokens": _check("transformers", first, b, 1),
        }
    return out


def _decode_rate(batch: int, n: int, run: dict[str, Any] | None) -> float | None:
    if run is None or n < 2 or not run["full_s"] > run["prefill_s"]:
        return None
    return batch * (n - 1) / (run["full_s"] - run["prefill_s"])


def sweep_results(
    args: argparse.Namespace,
    sizes: Sequence[int],
    ours: dict[int, dict[str, Any]],
    hf: dict[int, dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """One JSON-ready dict per batch size."""
    n = args.decode_output_len
    rows = []
    for b in sizes:
        theirs = None if hf is None else hf[b]
        ours_rate, hf_rate = _decode_rate(b, n, ours[b]), _decode_rate(b, n, theirs)
        row: dict[str, Any] = {
            "batch": b,
            "input_len": args.decode_input_len,
            "output_len": n,
            "loomlm_decode_tok_s": None if ours_rate is None else round(ours_rate, 1),
            "hf_decode_tok_s": None if hf_rate is None else round(hf_rate, 1),
            "ratio": None if ours_rate is None or not hf_rate else round(ours_rate / hf_rate, 3),
            "loomlm_output_tok_s": round(ours[b]["output_tokens"] / ours[b]["full_s"], 1),
            "hf_output_tok_s": None if theirs is None else round(theirs["output_tokens"] / theirs["full_s"], 1),
        }
        for side, run in (("loomlm", ours[b]), ("hf", theirs)):
            row[f"{side}_output_tokens"] = None if run is None else run["output_tokens"]
            row[f"{side}_prefill_run_tokens"] = None if run is None else run["prefill_run_tokens"]
            row[f"{side}_wall_s"] = None if run is None else round(run["full_s"], 4)
            row[f"{side}_prefill_wall_s"] = None if run is None else round(run["prefill_s"], 4)
        row["loomlm_stats"] = {
            k: v for k, v in ours[b].items() if k not in ("full_s", "prefill_s", "output_tokens", "prefill_run_tokens")
        }
        rows.append(row)
    return rows


def format_sweep(rows: Sequence[dict[str, Any]]) -> str:
    def num(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    headers = ("batch", "loomlm decode tok/s", "hf decode tok/s", "loomlm / hf", "loomlm e2e tok/s", "hf e2e tok/s")
    body = [
        (
            str(r["batch"]),
            num(r["loomlm_decode_tok_s"], ".1f"),
            num(r["hf_decode_tok_s"], ".1f"),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            num(r["loomlm_output_tok_s"], ".1f"),
            num(r["hf_output_tok_s"], ".1f"),
        )
        for r in rows
    ]
    first = rows[0] if rows else {"input_len": "?", "output_len": "?"}
    return (
        f"decode sweep ({first['input_len']}-token prompts, {first['output_len']} new tokens; "
        f"decode tok/s = b x (N - 1) / (T(N) - T(1)), the prefill-only run subtracted on both sides)\n"
        + text_table(headers, body)
    )
