"""`python -m loomlm.bench lowbit`: batch-1 decode of the same engine in each weight format, in one run.

One engine per format (`--formats`, default float32, bfloat16, int8, int4: the last two are weight-only
layers with bfloat16 activations, `quantization=`), all alive in one process on the default model. Each
decodes `--output-len` greedy tokens (EOS ignored) after the same `--input-len`-token prompt at batch 1;
the rounds are interleaved (fp32, bf16, int8, int4, fp32, ...), the prefix cache flushed before each.
Per format: the best output tok/s of `--repeats` rounds; the ratio to bfloat16 and to float32 as the
median over rounds of that round's ratio (a round's formats run seconds apart, so a machine that speeds
up or slows down for a while moves both sides of a ratio alike);
resident weight bytes (parameters and buffers, each tensor once), and the accuracy cost: the prompt
logprobs of a fixed English text against the float32 engine's (mean and largest absolute difference,
nats per token). Prints a table, and with `--json` one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from loomlm.bench.report import _cpu_model, text_table

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed in the dark, and "
    "none of them ran aground on the rocks below, because the light never failed. In the winter storms the "
    "waves broke over the gallery, and the keeper wrote in the log that the glass had held once more."
)
FORMATS = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"quantization": "int8"},
    "int4": {"quantization": "int4"},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench lowbit", description=__doc__.split("\n")[0])
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    p.add_argument("--input-len", type=int, default=42, help="prompt tokens (random ids, seeded)")
    p.add_argument("--output-len", type=int, default=128, help="new tokens per timed request")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def _prompt_logprobs(engine: Any) -> torch.Tensor:
    out = engine.generate(TEXT, {"max_new_tokens": 1}, return_logprob=True, logprob_start_len=0)
    return torch.tensor([lp for lp, *_ in out["meta_info"]["input_token_logprobs"] if lp is not None])


def _decode_seconds(engine: Any, prompt: list[int], new_tokens: int) -> float:
    engine.flush_cache()
    params = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    start = time.perf_counter()
    out = engine.generate(input_ids=prompt, sampling_params=params)
    seconds = time.perf_counter() - start
    if len(out["output_ids"]) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} tokens, got {len(out['output_ids'])}")
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loomlm.runtime.engine import Engine

    names = [n.strip() for n in args.formats.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise SystemExit(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(100, 40000, (args.input_len,), generator=gen).tolist()
    engines = {n: Engine(max_total_tokens=4096, max_running_requests=4, **FORMATS[n]) for n in names}
    try:
        for engine in engines.values():  # warm-up: first-call set-up is not what decoding pays
            _decode_seconds(engine, prompt, 8)
        rounds: list[dict[str, float]] = []
        for _ in range(args.repeats):
            rounds.append({n: _decode_seconds(engine, prompt, args.output_len) for n, engine in engines.items()})
        best = {n: min(r[n] for r in rounds) for n in names}
        logprobs = {n: _prompt_logprobs(e) for n, e in engines.items()}
        weights = {n: e.runner.weight_bytes() for n, e in engines.items()}
        linear = {n: e.runner.cpu_linear for n, e in engines.items()}
        attention = {n: e.runner.attention_backend for n, e in engines.items()}
    finally:
        for engine in engines.values():
            engine.shutdown()
    rates = {n: args.output_len / best[n] for n in names}
    rows = {}
    for n in names:
        row: dict[str, Any] = {
            "tok_s": rates[n],
            "weight_mib": weights[n] / 2**20,
            "linear": linear[n],
            "attention": attention[n],
        }
        for base in ("bfloat16", "float32"):
            if base in rates:
                row[f"vs_{base}"] = statistics.median(r[base] / r[n] for r in rounds)
        if "float32" in logprobs and n != "float32":
            drift = (logprobs[n] - logprobs["float32"]).abs()
            row["drift_mean"], row["drift_max"] = float(drift.mean()), float(drift.max())
        rows[n] = row
    return {
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "repeats": args.repeats,
        "formats": rows,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print(
        f"[bench lowbit] {result['cpu']}, {result['threads']} threads; batch 1, {args.input_len} prompt tokens, "
        f"{args.output_len} new, best of {args.repeats}; ratios: median of the rounds' ratios",
        file=sys.stderr,
    )
    headers = ["format", "tok/s", "vs bf16", "vs fp32", "weights MiB", "drift mean", "drift max", "linear"]
    body = [
        [
            n,
            f"{r['tok_s']:.1f}",
            _fmt(r.get("vs_bfloat16"), ".2f") + "x",
            _fmt(r.get("vs_float32"), ".2f") + "x",
            f"{r['weight_mib']:.1f}",
            _fmt(r.get("drift_mean"), ".3f"),
            _fmt(r.get("drift_max"), ".3f"),
            str(r["linear"]),
        ]
        for n, r in result["formats"].items()
    ]
    print(text_table(headers, body))
    print("drift: |prompt logprob - float32's| per token of a fixed text, nats")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
