"""Every kernel compiles for the H100/H200 (sm_90) on this CPU-only machine: ptxas accepts it, with no
register spills and shared memory within the limit (`python tools/kernel_compile_check.py`).

CI compiles the serving dtype (bfloat16) only; the slow variant compiles every dtype."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

CHECK = pathlib.Path(__file__).resolve().parents[2] / "tools" / "kernel_compile_check.py"


def _compile_check(dtypes: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for real
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # the default, without a warning
    out = subprocess.run(
        [sys.executable, str(CHECK), "--arch", "90", "--json", "--dtypes", dtypes],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_sm90_without_spills():
    _check_result(_compile_check("bfloat16"))


@pytest.mark.slow
def test_every_kernel_and_dtype_compiles_for_sm90_without_spills():
    _check_result(_compile_check("bfloat16,float16,float32"))


def _check_result(result: dict) -> None:
    assert result["failures"] == []
    compiled = result["compiled"]
    kernels = {r["kernel"] for r in compiled}
    assert kernels == {
        "_decode_split_kernel",
        "_decode_merge_kernel",
        "_extend_kernel",
        "_rope_kernel",
        "_store_kv_kernel",
        "_rms_norm_kernel",
        "_silu_and_mul_kernel",
        "_bitmask_kernel",
    }
    assert all(r["local_bytes"] == 0 for r in compiled)
    # The decode kernel is memory-bound: its 16-bit specialisations must stay light enough for several
    # resident blocks per SM (the GQA group as tl.dot rows took it from 189 registers to 56 at D=64).
    decode = [r for r in compiled if r["kernel"] == "_decode_split_kernel" and "float32" not in r["case"]]
    assert decode and max(r["registers"] for r in decode) <= 128, decode
