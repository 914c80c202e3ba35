"""`python -m loomlm.bench lowbit` on tiny settings: one row per format with its rate, ratios to the
float32 and bfloat16 engines of the same run, resident weights that shrink with the bits, and a logprob
drift against float32 that is small for every format (no timings asserted)."""

from __future__ import annotations

import json

import pytest

from loomlm.bench.__main__ import main as bench_main


def test_lowbit_tiny_run(capsys):
    argv = ["lowbit", "--input-len", "8", "--output-len", "4", "--repeats", "1", "--json"]
    assert bench_main([*argv, "--formats", "float32,bfloat16,int4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["format", "tok/s", "vs", "bf16"]
    result = json.loads(lines[-1])
    rows = result["formats"]
    assert list(rows) == ["float32", "bfloat16", "int4"]
    assert rows["float32"]["vs_float32"] == 1.0 and rows["bfloat16"]["vs_bfloat16"] == 1.0
    assert rows["int4"]["vs_float32"] > 0  # a median of per-round ratios (one round here)
    mib = {name: row["weight_mib"] for name, row in rows.items()}
    assert mib["int4"] < mib["bfloat16"] < mib["float32"]
    assert "drift_mean" not in rows["float32"]
    for name in ("bfloat16", "int4"):  # a broken format is nats off; these are hundredths
        assert 0 < rows[name]["drift_mean"] < 0.15, rows[name]
    assert rows["int4"]["linear"] == "int4" and rows["float32"]["attention"] in ("cpu", "torch")


def test_lowbit_refuses_an_unknown_format():
    with pytest.raises(SystemExit, match="unknown format"):
        bench_main(["lowbit", "--formats", "int3"])
