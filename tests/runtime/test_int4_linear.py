"""Int4 weight-only layers (`quantization="int4"`): both paths (PyTorch's int4 kernel for a few rows,
dequantise-then-matmul above) against the dequantised weight, the default model's Q4_1 weights kept by
their own 4-bit codes, and the prompt logprobs of fixed text against the float32 model (the accuracy
cost)."""

from __future__ import annotations

import pytest
import torch

import loomlm
from loomlm.runtime.models.gguf_loader import open_gguf, q4_1_codes
from loomlm.runtime.models.int4_linear import GROUP, KERNEL_MAX_ROWS, Int4Linear, dequantize, int4_available
from loomlm.runtime.models.loader import default_model_path

pytestmark = pytest.mark.skipif(not int4_available(), reason="this torch has no int4 weight-only CPU kernel")

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed in the dark, "
    "and none of them ran aground on the rocks below, because the light never failed."
)


@pytest.mark.parametrize("rows", [1, 40, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 1])
def test_int4_matmul_equals_its_dequantised_weight(rows):
    gen = torch.Generator().manual_seed(rows)
    linear = torch.nn.Linear(4 * GROUP, 96, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(96, 4 * GROUP, generator=gen) * 0.05)
    layer = Int4Linear.of(linear, torch.bfloat16)
    weight = dequantize(layer.nibbles, layer.scales_zeros, torch.float32)
    step = layer.scales_zeros[..., 0].float().t().repeat_interleave(GROUP, dim=1)  # [96, in]
    assert ((weight - linear.weight).abs() <= 0.5 * step + 1e-3).all()  # half a step (+ bf16 zero rounding)
    x = torch.randn(rows, 4 * GROUP, generator=gen).to(torch.bfloat16)
    want = x.float() @ weight.T + linear.bias.detach()
    got = layer(x)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 96)
    assert torch.allclose(got.float(), want, atol=0.02 * want.abs().max().item())


def test_int4_needs_whole_groups():
    with pytest.raises(ValueError, match="divisible by 32"):
        Int4Linear.of(torch.nn.Linear(40, 8), torch.bfloat16)


def _prompt_logprobs(engine: loomlm.Engine) -> torch.Tensor:
    out = engine.generate(TEXT, {"max_new_tokens": 1}, return_logprob=True, logprob_start_len=0)
    return torch.tensor([lp for lp, *_ in out["meta_info"]["input_token_logprobs"] if lp is not None])


def test_the_default_q4_1_model_keeps_its_codes_and_its_logprobs():
    """The default GGUF is Q4_1 (blocks of 32: w = d q + m): the int4 layers take the file's own codes
    (read from its blocks, not re-quantized from float weights), so the weights are the checkpoint's up to
    bfloat16 rounding of d and m, and the logprobs stay close."""
    with loomlm.Engine(max_total_tokens=1000, dtype="float32") as full:
        reference, full_bytes = _prompt_logprobs(full), full.runner.weight_bytes()
        w_ref = full.runner.model.layers[0].mlp.down_proj.weight.detach().clone()
    with loomlm.Engine(max_total_tokens=1000, quantization="int4") as int4:
        quantised, int4_bytes = _prompt_logprobs(int4), int4.runner.weight_bytes()
        assert int4.runner.cpu_linear == "int4"
        assert int4.runner.int4_checkpoint_projections == 4 * len(int4.runner.model.layers)
        down = int4.runner.model.layers[0].mlp.down_proj
        w = dequantize(down.nibbles, down.scales_zeros, torch.float32)
        qkv = int4.runner.model.layers[3].attn.qkv_proj
    reader = open_gguf(default_model_path())
    tensors = {t.name: t for t in reader.tensors}
    codes, d, _m = q4_1_codes(tensors["blk.0.ffn_down.weight"])
    assert torch.equal(torch.stack([down.nibbles & 15, down.nibbles >> 4], dim=-1).view(codes.shape), codes)
    assert torch.equal(down.scales_zeros[..., 0].t(), d.to(torch.bfloat16))
    # fused q/k/v: the file's v rows (not permuted by llama.cpp) are the last rows of the fused codes
    v_codes = q4_1_codes(tensors["blk.3.attn_v.weight"])[0]
    qkv_codes = torch.stack([qkv.nibbles & 15, qkv.nibbles >> 4], dim=-1).view(qkv.nibbles.shape[0], -1)
    assert torch.equal(qkv_codes[-v_codes.shape[0] :], v_codes)
    step = down.scales_zeros[..., 0].float().t().repeat_interleave(GROUP, dim=1)
    assert ((w - w_ref).abs() <= 0.05 * step + 2e-3).all()  # the same code everywhere, not half a step off
    drift = (quantised - reference).abs()
    # measured 2026-12-07: mean 0.057 nats, largest 0.20 (int8 rows: 0.092); a broken kernel is nats off
    assert drift.mean() < 0.12 and quantised.mean() > reference.mean() - 0.1, (drift.mean(), drift.max())
    assert int4_bytes < 0.45 * full_bytes


def test_q4_1_blocks_parse_to_what_gguf_dequantizes():
    from gguf.quants import dequantize as gguf_dequantize

    reader = open_gguf(default_model_path())
    for tensor in [t for t in reader.tensors if t.tensor_type.name == "Q4_1"][:7]:
        codes, d, m = q4_1_codes(tensor)
        want = torch.from_numpy(gguf_dequantize(tensor.data, tensor.tensor_type).copy())
        got = codes.float() * d.repeat_interleave(GROUP, dim=1) + m.repeat_interleave(GROUP, dim=1)
        assert codes.max() <= 15 and torch.equal(got, want), tensor.name
