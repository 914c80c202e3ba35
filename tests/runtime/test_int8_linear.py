"""Int8 weight-only layers (`quantization="int8"`): the matmul against its dequantised reference on both
paths (PyTorch's int8 kernel for a few rows, dequantise-then-matmul above), and the default model's
prompt logprobs against the unquantised bfloat16 model on fixed text (the accuracy cost)."""

from __future__ import annotations

import pytest
import torch

import loomlm
from loomlm.runtime.models.int8_linear import KERNEL_MAX_ROWS, int8_available, int8_linear, quantize_rows

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch has no int8 weight-only kernel")

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed in the dark, "
    "and none of them ran aground on the rocks below, because the light never failed."
)


@pytest.mark.parametrize("rows", [1, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 1, 40])
def test_int8_matmul_equals_its_dequantised_weight(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=gen)
    q, scales = quantize_rows(weight, torch.bfloat16)
    assert q.dtype == torch.int8 and scales.shape == (96,)
    assert (
        q.float() * scales.float()[:, None] - weight
    ).abs().max() <= scales.float().max()  # half a step, or a clamped step
    x = torch.randn(rows, 64, generator=gen).to(torch.bfloat16)
    want = x.float() @ (q.float() * scales.float()[:, None]).T
    got = int8_linear(x, q, scales)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 96)
    assert torch.allclose(got.float(), want, atol=0.05 * want.abs().max().item())


def _prompt_logprobs(engine: loomlm.Engine) -> torch.Tensor:
    out = engine.generate(TEXT, {"max_new_tokens": 1}, return_logprob=True, logprob_start_len=0)
    return torch.tensor([lp for lp, *_ in out["meta_info"]["input_token_logprobs"] if lp is not None])


def test_int8_weights_cost_little_logprob_and_take_fewer_bytes():
    with loomlm.Engine(max_total_tokens=1000, dtype="bfloat16", cpu_linear="torch") as bf16:
        reference, full_bytes = _prompt_logprobs(bf16), bf16.runner.weight_bytes()
    with loomlm.Engine(max_total_tokens=1000, quantization="int8") as int8:
        quantised, int8_bytes = _prompt_logprobs(int8), int8.runner.weight_bytes()
        assert int8.runner.cpu_linear == "int8"
    drift = (quantised - reference).abs()
    # measured 2026-12-07: see docs/benchmarks.md (int8 weight-only); a broken kernel or scale is nats off
    assert drift.mean() < 0.15 and quantised.mean() > reference.mean() - 0.1, (drift.mean(), drift.max())
    assert int8_bytes < 0.75 * full_bytes


def test_int8_needs_bfloat16_activations_and_a_known_name():
    with pytest.raises(ValueError, match="bfloat16 activations"):
        loomlm.Engine(quantization="int8", dtype="float32")
    with pytest.raises(ValueError, match="quantization must be one of"):
        loomlm.Engine(quantization="int3")
