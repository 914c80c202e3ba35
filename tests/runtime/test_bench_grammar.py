"""`python -m loomlm.bench grammar` on tiny settings: the summary keys are there and positive, and every
library's mask allows every token of the trajectories (counts, not timings). A baseline library that
is not installed is reported as such and only its keys are skipped."""

from __future__ import annotations

import importlib.util
import json
import re
import time

import pytest

from loomlm.bench.__main__ import main as bench_main
from loomlm.bench.grammar import timed_call
from loomlm.bench.grammar_workload import REGEXES, SCHEMAS

BASELINES = ("outlines_core", "xgrammar")


def test_workload_examples_are_valid():
    jsonschema = pytest.importorskip("jsonschema")
    for case in SCHEMAS:
        jsonschema.validate(case.instance, case.spec, format_checker=jsonschema.FormatChecker())
        assert json.loads(case.example) == case.instance
    for case in REGEXES:
        assert re.fullmatch(case.spec, case.example), case.name


def test_grammar_bench_tiny_run(capsys):
    rc = bench_main(
        [
            "grammar",
            "--skip-e2e",
            "--json",
            "--repeats",
            "1",
            "--compile-repeats",
            "1",
            "--schemas",
            "2",
            "--regexes",
            "1",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "case"
    result = json.loads(lines[-1])
    assert result["e2e"] == "skipped" and result["jump_forward_forward_pass_reduction"] is None
    assert set(result["cases"]) == {SCHEMAS[0].name, SCHEMAS[1].name, REGEXES[0].name}

    for key in (
        "loomlm_mask_us_p50",
        "loomlm_mask_us_p99",
        "loomlm_numpy_mask_us_p50",
        "loomlm_compile_ms_median",
        "loomlm_regex_compile_ms_median",
        "loomlm_vocab_setup_ms",
    ):
        assert result[key] > 0, key
    assert result["loomlm_compile_failures"] == []
    for name in BASELINES:
        if importlib.util.find_spec(name) is None:
            assert result["libraries"][name].startswith("not installed")
            assert result[f"{name}_mask_us_p50"] is None
            continue
        for key in ("mask_us_p50", "mask_us_p99", "compile_ms_median", "regex_compile_ms_median", "vocab_setup_ms"):
            assert result[f"{name}_{key}"] > 0, f"{name}_{key}"
        assert result[f"{name}_compile_failures"] == []

    # Every library allowed every trajectory token, and loomlm's torch and numpy masks agree.
    steps = sum(case["tokens"] for case in result["cases"].values())
    assert result["mask_checked_steps"] == steps
    assert result["mask_disagreements"] == 0, result["mask_disagreements_by_library"]
    assert result["mask_timed_steps"] == steps  # --repeats 1, every case walked by every library
    assert set(result["targets"]) == {"mask_p50_le_xgrammar", "compile_le_3x_outlines_core", "compile_lt_100ms"}


def test_grammar_bench_rejects_bad_arguments(capsys):
    assert bench_main(["grammar", "--repeats", "0"]) == 2
    assert bench_main(["grammar", "--libraries", "loomlm,guidance"]) == 2
    assert "guidance" in capsys.readouterr().err


def test_timed_call_abandons_a_slow_compile():
    seconds, value, error = timed_call(lambda: time.sleep(0.5), 0.05)
    assert seconds is None and value is None and error.startswith("timeout")
    seconds, value, error = timed_call(lambda: 7, 5.0)
    assert value == 7 and error is None and seconds >= 0
    _, _, error = timed_call(lambda: 1 / 0, 5.0)
    assert error.startswith("ZeroDivisionError")
