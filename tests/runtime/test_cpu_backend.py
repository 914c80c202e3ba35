"""The engine on the cpu attention backend (loomlm's C++ kernels, the CPU default) produces the torch
backend's greedy tokens, with logprobs to float32 rounding: ragged extend batches, cached prefixes,
chunked prefill, decode, shared-prefix decode groups; on the default model as on a tiny dummy one. And
where the kernels cannot be built, the engine says why and runs the torch backend; asked for `cpu`
explicitly, it refuses with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import loomlm

sys.path.insert(0, str(Path(__file__).parent))
from backend_workload import PROMPTS, TINY

PARAMS = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}


def _run(backend: str, n: int = 1) -> list[tuple[list[int], torch.Tensor]]:
    engine = loomlm.Engine(
        load_format="dummy",
        json_model_override_args=TINY,
        attention_backend=backend,
        dtype="float32",
        max_total_tokens=2048,
        max_running_requests=16,
        chunked_prefill_size=32,
        random_seed=5,
    )
    try:
        engine.generate(input_ids=[PROMPTS[3]], sampling_params={**PARAMS, "max_new_tokens": 1})
        # n copies of each prompt decode as shared-prefix groups: the torch backend reads the prefix once per
        # group (cascade), the cpu backend once per request
        outs = engine.generate(input_ids=PROMPTS, sampling_params={**PARAMS, "n": n}, return_logprob=True)
        engine.idle_integrity()
        assert engine.runner.attention_backend == backend
    finally:
        engine.shutdown()
    return [
        (o["output_ids"], torch.tensor([lp for lp, _t, _ in o["meta_info"]["output_token_logprobs"]])) for o in outs
    ]


@pytest.mark.parametrize("n", [1, 3])
def test_cpu_backend_matches_the_torch_backend_on_a_tiny_model(n):
    want, got = _run("torch", n), _run("cpu", n)
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for (_, lp_got), (_, lp_want) in zip(got, want, strict=True):
        torch.testing.assert_close(lp_got, lp_want, rtol=1e-4, atol=1e-4)


def test_cpu_backend_matches_the_torch_backend_on_the_default_model(engine):
    prompts = ["The capital of France is", "List three colours:", "def fibonacci(n):"]
    params = {"max_new_tokens": 24, "temperature": 0}
    assert engine.runner.attention_backend == "cpu"  # the CPU default where the kernels build
    got = engine.generate(prompts, params)
    with loomlm.Engine(attention_backend="torch", max_total_tokens=4096, max_running_requests=4) as plain:
        want = plain.generate(prompts, params)
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in want]


def test_without_the_kernels_the_engine_falls_back_to_torch_and_an_explicit_cpu_request_is_refused():
    script = textwrap.dedent(
        f"""
        import loomlm
        tiny = dict(load_format="dummy", json_model_override_args={TINY!r}, max_total_tokens=256)
        with loomlm.Engine(**tiny) as engine:
            assert engine.runner.attention_backend == "torch"
            out = engine.generate(input_ids=[[1, 2, 3]], sampling_params={PARAMS!r})
            assert len(out[0]["output_ids"]) == 8
        try:
            loomlm.Engine(attention_backend="cpu", **tiny)
        except ValueError as exc:
            assert "attention_backend 'cpu' is unavailable: disabled by LOOMLM_CPU_KERNELS" in str(exc), exc
            print("REFUSED")
        """
    )
    env = {**os.environ, "LOOMLM_CPU_KERNELS": "0"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED" in done.stdout
    assert "CPU kernels unavailable (disabled by LOOMLM_CPU_KERNELS); attention backend torch" in done.stderr
