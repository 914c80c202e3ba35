"""`python -m loomlm.bench kernels` in the Triton interpreter (tiny grid, meaningless timings): every row
and key is there, the bytes are counted as documented, outputs agree with the baselines; and without CUDA
or the interpreter it refuses with status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from loomlm.bench import kernels as bench
from loomlm.kernels import attention_block, decode_attention


def test_small_run_reports_every_row(capsys, device):
    """The tiny grid: in the interpreter on CPU (CI), or compiled on the GPU in cuda mode."""
    interpreted = device.type == "cpu"
    assert attention_block.interpreted() == interpreted  # tests/kernels/conftest.py decides
    assert bench.main(["--json", "--sweep-splits", "--sizes", "small"]) == 0
    out = capsys.readouterr().out
    assert ("MEANINGLESS" in out) == interpreted
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["mode"] == ("interpreter" if interpreted else "cuda")
    assert result["timings_meaningful"] is not interpreted
    assert result["sizes"] == "small" and result["copy_bandwidth_gb_s"] > 0
    assert result["decode_attention_64x2048_pct_of_copy"] is None  # not in the tiny grid
    for key in ("device", "torch", "triton", "dtype", "copy_bytes_per_rep", "target_pct_of_copy"):
        assert result[key] not in (None, ""), key
    rows = result["rows"]
    kernels = [r["kernel"] for r in rows]
    batches, contexts = bench.SMALL_GRID["decode"]
    assert kernels.count("decode_attention") == len(batches) * len(contexts)
    for name in ("rms_norm+residual", "silu_and_mul", "apply_rope_", "store_kv_"):
        assert kernels.count(name) == len(bench.SMALL_GRID["tokens"]), name
    assert kernels.count("apply_token_bitmask_") == 1
    extend = [r for r in rows if r["kernel"] == "extend_attention"]
    assert len(extend) == len(bench.SMALL_GRID["extend"]) and all(r["tflop_s"] >= 0 for r in extend)
    for row in rows:
        for key in (
            "shape",
            "time_us",
            "bytes",
            "gb_s",
            "pct_of_copy",
            "baseline",
            "baseline_us",
            "kernel_speedup_vs_baseline",
        ):
            assert row.get(key) is not None, (row["kernel"], key)
        assert row["time_us"] > 0 and row["bytes"] > 0
        # float32 in the interpreter; bf16 on a GPU, where one rounding step of values ~10 is ~0.06.
        bound = 1e-4 if interpreted else 0.5
        assert isinstance(row["max_abs_err_vs_baseline"], float) and row["max_abs_err_vs_baseline"] < bound, row
    dtype_bytes = 4 if interpreted else 2  # float32 in the interpreter, bf16 on GPUs
    for row in (r for r in rows if r["kernel"] == "decode_attention"):
        b, n = row["batch"], row["context"]
        kv = 2 * b * n * bench.KV_HEADS * bench.HEAD_DIM * dtype_bytes
        assert row["bytes"] == kv + 4 * b * n + 2 * b * bench.HEADS * bench.HEAD_DIM * dtype_bytes + 8 * b
        assert row["num_kv_splits"] >= 1 and row["programs"] == b * bench.KV_HEADS * row["num_kv_splits"]
        assert row["best_time_us"] == row["splits_sweep_us"][str(row["best_splits"])]
    header = next(line for line in lines if line.startswith("kernel "))
    assert "GB/s" in header and "% copy" in header and "baseline us" in header


def test_split_choice_fills_the_gpu_at_small_batch():
    assert decode_attention.default_num_kv_splits(1, 3, 132) == 16
    assert decode_attention.default_num_kv_splits(64, 3, 132) == 3
    assert decode_attention.default_num_kv_splits(256, 3, 132) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the benchmark would really run")
def test_without_cuda_or_interpreter_it_exits_2():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "loomlm.bench", "kernels", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "needs a CUDA GPU" in out.stderr and out.stdout == ""
