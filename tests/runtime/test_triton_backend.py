"""The engine on the triton attention backend (and the fused Triton ops), run in the Triton interpreter
on CPU, produces the torch backend's greedy tokens and logprobs on a tiny dummy model: ragged extend
batches, cached prefixes, chunked prefill, decode, and the CUDA-graph runner's static-buffer path.

On a GPU: `LOOMLM_KERNEL_TEST_DEVICE=cuda pytest tests/runtime/test_triton_backend.py` runs the same
checks compiled on CUDA, with the decode steps replayed from real captured graphs."""

from __future__ import annotations

import os

DEVICE = os.environ.get("LOOMLM_KERNEL_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import loomlm  # noqa: E402
from loomlm.runtime.cuda_graph import DecodeGraphRunner, decode_buckets  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from backend_workload import PROMPTS, SHARED, TINY  # noqa: E402

PARAMS = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}


def _engine(backend: str) -> loomlm.Engine:
    return loomlm.Engine(
        load_format="dummy",
        json_model_override_args=TINY,
        attention_backend=backend,
        dtype="float32",
        device=DEVICE,
        max_total_tokens=2048,
        max_running_requests=16,
        chunked_prefill_size=32,
        random_seed=5,
    )


def _run(engine: loomlm.Engine, prompts: list[list[int]]) -> list[tuple[list[int], torch.Tensor]]:
    # The first two prompts go alone first, so the shared prefix is cached when the rest arrive.
    engine.generate(input_ids=[prompts[3]], sampling_params={**PARAMS, "max_new_tokens": 1})
    outs = engine.generate(input_ids=prompts, sampling_params=PARAMS, return_logprob=True)
    return [
        (o["output_ids"], torch.tensor([lp for lp, _t, _ in o["meta_info"]["output_token_logprobs"]])) for o in outs
    ]


@pytest.fixture(scope="module")
def torch_outputs():
    engine = _engine("torch")
    try:
        yield _run(engine, PROMPTS)
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def triton_engine():
    engine = _engine("triton")
    yield engine
    engine.shutdown()


def _assert_same(got, expected) -> None:
    for (ids, lps), (ref_ids, ref_lps) in zip(got, expected):
        assert ids == ref_ids
        assert torch.allclose(lps, ref_lps, atol=1e-4), (lps - ref_lps).abs().max()


def test_triton_backend_uses_the_kernels(triton_engine):
    runner = triton_engine.core.runner
    assert type(runner.attn_backend).__name__ == "TritonAttentionBackend"
    assert runner.model.ops.name == "triton"
    assert (runner.graph_runner is not None) == (DEVICE == "cuda")  # CUDA graphs on CUDA only


def test_greedy_output_equals_torch_backend(triton_engine, torch_outputs):
    before = triton_engine.get_stats()
    _assert_same(_run(triton_engine, PROMPTS), torch_outputs)
    after = triton_engine.get_stats()
    assert after["cached_prefill_tokens"] - before["cached_prefill_tokens"] >= len(SHARED)  # a real prefix was read
    assert after["extend_passes"] - before["extend_passes"] >= 3  # chunked 71-token prompt
    triton_engine.idle_integrity()


def test_decode_graph_runner_static_path_equals_torch_backend(triton_engine, torch_outputs):
    """The graph runner's padded static-buffer decode (replayed graphs on CUDA, the same path run eagerly
    on CPU) gives the same tokens: batches pad to buckets 1, 2, 4, 8, and with max_bs 4 a 5-request step
    runs eagerly."""
    runner = triton_engine.core.runner
    default_runner = runner.graph_runner
    for max_bs in (8, 4):
        runner.graph_runner = DecodeGraphRunner(runner, max_bs, capture=DEVICE == "cuda")
        decodes = triton_engine.get_stats()["decode_passes"]
        try:
            _assert_same(_run(triton_engine, PROMPTS), torch_outputs)
            stats = triton_engine.get_stats()
        finally:
            runner.graph_runner = default_runner
        decodes = stats["decode_passes"] - decodes
        if max_bs == 8:  # every decode step replayed (5 requests, 5 steps each at least)
            assert stats["cuda_graph_replays"] == decodes >= 5, (stats["cuda_graph_replays"], decodes)
        else:  # the 5-request steps ran eagerly
            assert stats["cuda_graph_replays"] < decodes, (stats["cuda_graph_replays"], decodes)
    triton_engine.idle_integrity()


def test_decode_buckets():
    assert decode_buckets(1) == [1]
    assert decode_buckets(8) == [1, 2, 4, 8]
    assert decode_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    assert decode_buckets(256)[-3:] == [224, 240, 256]


def test_bad_backend_and_override_are_named():
    with pytest.raises(ValueError, match="attention_backend"):
        loomlm.EngineConfig(attention_backend="flash")
    with pytest.raises(ValueError, match="json_model_override_args"):
        loomlm.EngineConfig(json_model_override_args="{not json")
    with pytest.raises(ValueError, match="json_model_override_args.*num_layerz"):
        loomlm.Engine(load_format="dummy", json_model_override_args='{"num_layerz": 2}')
