"""The CPU linear-layer paths (runtime/models/cpu_linear.py): oneDNN over packed weights computes what
F.linear does, the choice between them follows the measured times (injected here, never the clock),
and an engine on either path gives the same greedy tokens and logprobs within 1e-4."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import loomlm
from loomlm.runtime.models.cpu_linear import PackedLinear, choose_cpu_linear, onednn_available

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_computes_what_f_linear_does(dtype, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 200, bias=bias, dtype=dtype)
    packed = PackedLinear.of(linear)
    assert packed.weight is linear.weight and dict(packed.state_dict()).keys() == dict(linear.state_dict()).keys()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.inference_mode():
        for rows in (1, 3, 17, 64):
            x = torch.randn(rows, 96, dtype=dtype)
            expected = F.linear(x, linear.weight, linear.bias).float()
            assert torch.allclose(packed(x).float(), expected, atol=tolerance, rtol=tolerance), rows


def test_the_choice_follows_the_measured_times_and_is_made_once():
    calls = []

    def measure(times: dict[str, float]):
        def timed(kind: str, weight: torch.Tensor, batch: int) -> float:
            calls.append((kind, tuple(weight.shape), batch))
            return times[kind]

        return timed

    faster = [torch.zeros(11, 5), torch.zeros(11, 5), torch.zeros(3, 5)]  # two distinct shapes
    backend, why = choose_cpu_linear(faster, measure({"torch": 1.0, "onednn": 0.5}))
    assert backend == "onednn" and "oneDNN packed" in why
    assert len(calls) == 2 * 2 * 2  # two shapes, two batch sizes, two paths
    assert choose_cpu_linear(faster, measure({"torch": 0.1, "onednn": 9.0}))[0] == "onednn"  # kept
    assert len(calls) == 8
    close = [torch.zeros(13, 7)]  # oneDNN 5% faster: within the margin, torch stays
    assert choose_cpu_linear(close, measure({"torch": 1.0, "onednn": 0.95}))[0] == "torch"


def test_engines_on_either_path_agree(engine):
    """The default model with packed weights against F.linear: same greedy tokens, logprobs within 1e-4,
    the same parameters (shared, not copied) under the same names."""
    prompts = ["The capital of France is", "def add(a, b):", "Three colours:"]
    params = {"max_new_tokens": 12, "temperature": 0}
    outs = {}
    for path in ("torch", "onednn"):
        eng = loomlm.Engine(cpu_linear=path, max_total_tokens=2000, random_seed=1)
        try:
            assert eng.runner.cpu_linear == path
            outs[path] = eng.generate(prompts, sampling_params=params, return_logprob=True)
            names = dict(eng.runner.model.named_parameters())
            shared = dict(engine.runner.model.named_parameters())
            assert names.keys() == shared.keys()
            assert all(names[k].data_ptr() == shared[k].data_ptr() for k in names)
        finally:
            eng.shutdown()
    for plain, packed in zip(outs["torch"], outs["onednn"]):
        assert packed["output_ids"] == plain["output_ids"]
        lp = [x[0] for x in plain["meta_info"]["output_token_logprobs"]]
        lp_packed = [x[0] for x in packed["meta_info"]["output_token_logprobs"]]
        assert torch.allclose(torch.tensor(lp_packed), torch.tensor(lp), atol=1e-4)


def test_a_bad_choice_is_refused_by_name():
    with pytest.raises(ValueError, match="cpu_linear"):
        loomlm.EngineConfig(cpu_linear="mkl")


def test_a_path_that_fails_to_pack_is_not_chosen():
    def measure(kind: str, weight: torch.Tensor, batch: int) -> float:
        if kind == "onednn":
            raise RuntimeError("unsupported data type")
        return 1.0

    backend, why = choose_cpu_linear([torch.zeros(17, 9)], measure)
    assert backend == "torch" and "unsupported data type" in why
