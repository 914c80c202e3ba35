"""Benchmark output: one `Measurement` per system, an aligned text table, and facts about the machine.

The table's last column is loomlm's output tok/s divided by the row's (so "12.0x" reads "loomlm is
12 times faster than this row"); the loomlm row itself reads 1.00x.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Measurement:
    system: str
    requests: int
    output_tokens: int
    wall_s: float

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else math.nan


def speedup(ours: Measurement, other: Measurement | None) -> float | None:
    """ours' output tok/s over other's; None when there is nothing to compare with."""
    if other is None or not other.output_tok_s > 0:
        return None
    return ours.output_tok_s / other.output_tok_s


def format_table(rows: Sequence[Measurement], baseline: Measurement) -> str:
    headers = ("system", "requests", "output tokens", "wall s", "output tok/s", "loomlm / this")
    body = []
    for row in rows:
        ratio = speedup(baseline, row)
        body.append(
            (
                row.system,
                str(row.requests),
                str(row.output_tokens),
                f"{row.wall_s:.2f}",
                f"{row.output_tok_s:.1f}",
                "-" if ratio is None else f"{ratio:.2f}x",
            )
        )
    return text_table(headers, body)


def text_table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned, a dashed rule under the
    headers."""
    widths = [max(len(row[i]) for row in (headers, *body)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in body)])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for text in f:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(text.startswith("flags") and flag in text.split() for text in f)
    except OSError:
        return False


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, date and hardware, recorded next to every result."""
    import transformers

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{_cpu_model()}, {os.cpu_count()} logical cores" + (
            ", avx512_bf16" if _cpu_has("avx512_bf16") else ""
        )
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hardware": hardware,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_1m_after": round(os.getloadavg()[0], 2),  # other work on the machine skews timings
    }
