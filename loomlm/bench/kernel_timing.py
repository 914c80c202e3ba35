"""Timing and reporting for `python -m loomlm.bench kernels`: the kernel timer, the device's copy
bandwidth, output comparison, and the rows and table of the report."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


class Timer:
    """Median kernel time in µs: do_bench on CUDA (optionally replaying a CUDA graph of the call, which
    removes the host's launch overhead); wall clock over a few calls in the interpreter."""

    def __init__(self, device: torch.device, warmup_ms: int, rep_ms: int, cuda_graph: bool):
        self.cuda = device.type == "cuda"
        self.warmup_ms, self.rep_ms, self.cuda_graph = warmup_ms, rep_ms, cuda_graph and self.cuda
        self.graph_failures: list[str] = []

    def _graphed(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        fn()  # compiles the kernels outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                fn()
        except RuntimeError as exc:  # something in the call cannot be captured: time it eagerly
            self.graph_failures.append(str(exc).splitlines()[0][:200])
            torch.cuda.synchronize()
            return fn
        return graph.replay  # the bound method keeps the graph alive

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            from triton.testing import do_bench

            if self.cuda_graph:
                fn = self._graphed(fn)
            return 1e3 * do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median")
        fn()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e6 * statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int, reps: int = 10) -> float:
    """GB/s of a device-to-device copy of `nbytes`: (read + written) / time, best of `reps`."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.zeros_like(src)
    for _ in range(3):
        dst.copy_(src)
    best = math.inf
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / best / 1e9


def max_err(*pairs: tuple[torch.Tensor, torch.Tensor]) -> float | str:
    """Largest |a - b| over the pairs (equal entries, infinities included, count 0); the string "inf"
    (JSON has no infinity) when an entry is infinite or NaN on one side only."""
    worst = 0.0
    for a, b in pairs:
        a, b = a.float(), b.float()
        diff = torch.where(a == b, torch.zeros_like(a), (a - b).abs().nan_to_num(nan=math.inf))
        if diff.numel():
            worst = max(worst, float(diff.max()))
    return worst if math.isfinite(worst) else "inf"


def make_row(kernel: str, shape: str, us: float, nbytes: int, copy_gb_s: float, **extra: Any) -> dict[str, Any]:
    gb_s = nbytes / (us * 1e-6) / 1e9
    row: dict[str, Any] = {
        "kernel": kernel,
        "shape": shape,
        "time_us": round(us, 2),
        "bytes": nbytes,
        "gb_s": round(gb_s, 1),
        "pct_of_copy": round(100 * gb_s / copy_gb_s, 1),
    }
    flops = extra.pop("flops", None)
    if flops is not None:
        row["flops"] = flops
        row["tflop_s"] = round(flops / (us * 1e-6) / 1e12, 2)
    baseline_us = extra.get("baseline_us")
    if baseline_us is not None:
        row["baseline_us"] = round(baseline_us, 2)
        row["kernel_speedup_vs_baseline"] = round(baseline_us / us, 3)
        if flops is not None:
            row["baseline_tflop_s"] = round(flops / (baseline_us * 1e-6) / 1e12, 2)
    for key, value in extra.items():
        if key != "baseline_us":
            row[key] = value
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fmt_err(value: Any) -> str:
    return value if isinstance(value, str) else _fmt(value, ".1e")


def format_rows(rows: list[dict[str, Any]]) -> str:
    headers = [
        "kernel",
        "shape",
        "splits",
        "us",
        "MB",
        "GB/s",
        "% copy",
        "TFLOP/s",
        "baseline us",
        "speedup",
        "max err",
    ]
    sweep = any("best_splits" in r for r in rows)
    if sweep:
        headers += ["best splits (us)"]
    body = []
    for r in rows:
        cells = [
            r["kernel"],
            r["shape"],
            _fmt(r.get("num_kv_splits"), "d"),
            f"{r['time_us']:.1f}",
            f"{r['bytes'] / 1e6:.2f}",
            f"{r['gb_s']:.0f}",
            f"{r['pct_of_copy']:.1f}",
            _fmt(r.get("tflop_s"), ".1f"),
            _fmt(r.get("baseline_us"), ".1f"),
            _fmt(r.get("kernel_speedup_vs_baseline"), ".2f"),
            _fmt_err(r.get("max_abs_err_vs_baseline")),
        ]
        if sweep:
            cells.append(f"{r['best_splits']} ({r['best_time_us']:.1f})" if "best_splits" in r else "-")
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *body)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]
        )

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(c) for c in body)])


LEGEND = (
    "us: median kernel time; MB: bytes the kernel must move (see the module docstring); % copy: GB/s over "
    "the measured copy bandwidth; baseline: decode = torch SDPA on pre-gathered contiguous K/V (no slot "
    "gather), extend = SDPA on gathered GQA-expanded K/V (causal mask), others = the unfused torch "
    "reference; speedup = baseline us / kernel us; max err = max |kernel - baseline|."
)
