"""dtype="auto" on CPU (runtime/models/cpu_dtype.py): the rule, the measured choice with injected timings,
the process override the test suite uses, and an engine that resolves it."""

from __future__ import annotations

import logging

import pytest
import torch

import loomlm
from loomlm.runtime.models import cpu_dtype
from loomlm.runtime.models.cpu_dtype import ENV_OVERRIDE, choose_cpu_dtype, time_dtype


@pytest.fixture
def measured(monkeypatch):
    """No override and an empty per-process cache: the choice is measured."""
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(cpu_dtype, "_choices", {})


def timings(fp32_s: float, bf16_s: float):
    calls = []

    def measure(dtype, hidden, intermediate):
        calls.append(dtype)
        return fp32_s if dtype == torch.float32 else bf16_s

    return measure, calls


def test_no_native_bf16_means_float32_without_measuring(measured):
    measure, calls = timings(1.0, 0.1)
    dtype, why = choose_cpu_dtype(64, 128, flags={"avx2", "avx512f"}, measure=measure)
    assert dtype == torch.float32 and not calls and "no native bfloat16" in why


@pytest.mark.parametrize(
    "fp32_s,bf16_s,want", [(4.0, 2.0, torch.bfloat16), (4.0, 3.8, torch.float32), (2.0, 4.0, torch.float32)]
)
def test_native_bf16_is_kept_only_when_clearly_faster(measured, fp32_s, bf16_s, want):
    measure, calls = timings(fp32_s, bf16_s)
    dtype, why = choose_cpu_dtype(64, 128, flags={"avx512_bf16"}, measure=measure)
    assert dtype == want and sorted(map(str, calls)) == ["torch.bfloat16", "torch.float32"]
    assert "avx512_bf16" in why and "64x128" in why
    again, _ = choose_cpu_dtype(64, 128, flags={"avx512_bf16"}, measure=measure)
    assert again == want and len(calls) == 2  # decided once per process


def test_the_override_fixes_the_choice(monkeypatch):
    monkeypatch.setenv(ENV_OVERRIDE, "bfloat16")
    assert choose_cpu_dtype(64, 128, flags=set())[0] == torch.bfloat16
    monkeypatch.setenv(ENV_OVERRIDE, "fp8")
    with pytest.raises(ValueError, match=ENV_OVERRIDE):
        choose_cpu_dtype(64, 128)


def test_the_measurement_runs_both_paths():
    assert time_dtype(torch.float32, 32, 64) > 0 and time_dtype(torch.bfloat16, 32, 64) > 0


def test_an_auto_engine_takes_the_choice_and_logs_it(monkeypatch, caplog):
    monkeypatch.setenv(ENV_OVERRIDE, "bfloat16")
    with caplog.at_level(logging.INFO, logger="loomlm.runtime.model_runner"):
        engine = loomlm.Engine(load_format="dummy", max_total_tokens=256)
    try:
        assert engine.runner.dtype == torch.bfloat16
        assert engine.runner.kv_pool.dtype == torch.bfloat16
        assert "dtype auto on CPU: bfloat16" in caplog.text
        out = engine.generate("Hello", {"max_new_tokens": 3, "temperature": 0})
        assert out["meta_info"]["completion_tokens"] == 3
    finally:
        engine.shutdown()
    pinned = loomlm.Engine(load_format="dummy", max_total_tokens=256, dtype="float32")
    try:
        assert pinned.runner.dtype == torch.float32  # an explicit dtype is never measured over
    finally:
        pinned.shutdown()
