"""`python -m loomlm.bench offline` runs end to end on tiny settings and reports honest token counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loomlm.bench.__main__ import main as bench_main
from loomlm.bench.hf_baseline import left_pad
from loomlm.bench.offline import make_prompts
from loomlm.bench.report import Measurement, format_table

# A one-layer model of the default model's vocabulary: the benchmark's code paths at a fraction of the cost.
TINY = '{"num_layers": 1, "hidden_size": 64, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 1}'


def test_offline_tiny_run_reports_every_field(capsys):
    rc = bench_main(
        [
            "offline",
            "--num-prompts",
            "3",
            "--input-len",
            "8",
            "--output-len",
            "4",
            "--batch-size",
            "2",
            "--load-format",
            "dummy",
            "--json-model-override-args",
            TINY,
            "--hf-sequential-prompts",
            "2",
            "--json",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert lines[0].split()[0] == "system" and any(line.startswith("loomlm ") for line in lines)
    for key in ("loomlm_output_tok_s", "hf_sequential_output_tok_s", "hf_batched_output_tok_s"):
        assert result[key] > 0, key
    for key in ("ratio_vs_hf_sequential", "ratio_vs_hf_batched"):
        assert result[key] > 0, key
    assert (result["loomlm_requests"], result["loomlm_output_tokens"]) == (3, 12)
    assert (result["hf_sequential_requests"], result["hf_sequential_output_tokens"]) == (2, 8)
    assert (result["hf_batched_requests"], result["hf_batched_output_tokens"]) == (3, 12)
    assert result["hf_sequential_same_tokens_as_loomlm"] is None  # dummy weights differ per side
    assert result["loomlm_stats"]["max_running_batch"] == 3
    for key in ("dtype", "device", "torch", "threads", "date", "load_format"):
        assert result[key] not in (None, ""), key
    assert result["dtype"] == "float32" and result["load_format"] == "dummy"


def test_unknown_benchmark_is_a_usage_error(capsys):
    assert bench_main(["no-such-bench"]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "no-such-bench" in err
    assert bench_main([]) == 2


def test_bad_offline_argument_exits_2():
    out = subprocess.run(
        [sys.executable, "-m", "loomlm.bench", "offline", "--num-prompts", "0"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--num-prompts" in out.stderr


def test_prompts_are_seeded_and_padding_is_left():
    a = make_prompts(4, 5, 100, seed=3)
    assert a == make_prompts(4, 5, 100, seed=3) and a != make_prompts(4, 5, 100, seed=4)
    assert all(len(p) == 5 and all(0 <= t < 100 for t in p) for p in a)
    ids, mask = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_table_ratio_column():
    ours = Measurement("loomlm", 2, 100, 1.0)
    table = format_table([ours, Measurement("hf", 2, 100, 4.0)], ours)
    assert "1.00x" in table and "4.00x" in table
    assert Measurement("x", 1, 10, 0.5).output_tok_s == pytest.approx(20.0)


def test_decode_sweep_reports_each_batch_size(capsys):
    rc = bench_main(
        [
            "offline",
            "--sweep-only",
            "--decode-batch-sizes",
            "1,2",
            "--decode-input-len",
            "8",
            "--decode-output-len",
            "3",
            "--load-format",
            "dummy",
            "--json-model-override-args",
            TINY,
            "--json",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])
    assert "decode sweep" in out and any(line.startswith("batch ") for line in lines)
    sweep = result["decode_sweep"]
    assert [row["batch"] for row in sweep] == [1, 2]
    for row in sweep:
        b = row["batch"]
        assert (row["input_len"], row["output_len"]) == (8, 3)
        for side in ("loomlm", "hf"):
            assert row[f"{side}_output_tokens"] == 3 * b and row[f"{side}_prefill_run_tokens"] == b
            assert row[f"{side}_wall_s"] > 0 and row[f"{side}_prefill_wall_s"] > 0
            assert row[f"{side}_output_tok_s"] > 0
        assert row["loomlm_stats"]["decode_passes"] == 2  # all b requests decoded together
        assert row["loomlm_stats"]["max_running_batch"] >= b
        for key in ("loomlm_decode_tok_s", "hf_decode_tok_s", "ratio"):
            assert key in row  # None only when a 1-token run took longer than the full one (noise)
    assert result["loomlm_output_tok_s"] is None and result["loomlm_stats"] is None  # --sweep-only
    assert result["json_model_override_args"] == TINY
    assert "output_len - 1" in result["decode_tok_s_definition"]


def test_decode_sweep_arguments():
    from loomlm.bench.offline_decode import parse_batch_sizes

    assert parse_batch_sizes("1,16,64,256") == (1, 16, 64, 256)
    assert parse_batch_sizes("off") == () and parse_batch_sizes("2,2") == (2,)
    out = subprocess.run(
        [sys.executable, "-m", "loomlm.bench", "offline", "--sweep-only", "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--decode-batch-sizes" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "loomlm.bench", "offline", "--json-model-override-args", TINY],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "needs --load-format dummy" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "loomlm.bench", "offline", "--decode-batch-sizes", "1,0"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "positive" in out.stderr


@pytest.mark.parametrize("quantization", [None, "int8", "int4"])
def test_every_engine_setting_reaches_the_engine(quantization):
    """`--quantization` once only reached the report: the engine ran unquantised bfloat16."""
    import torch

    from loomlm.bench.offline import build_parser
    from loomlm.bench.offline_decode import engine_kwargs
    from loomlm.runtime.config import EngineConfig

    argv = ["--quantization", quantization] if quantization else []
    kwargs = engine_kwargs(build_parser().parse_args(argv), torch.device("cpu"), 2)
    assert EngineConfig(**{**kwargs, "dtype": "auto"}).quantization == quantization
