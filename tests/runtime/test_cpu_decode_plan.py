"""The C++ decode loop (runtime/models/cpu_decode.py) computes what the Python layer loop computes: the same
ops in the same order, so tokens and logprobs are bit-identical with the plan and without it, for every
kind of projection it drives (plain torch weights, oneDNN packed, int8 rows, int4 groups), with biases
(a Qwen2-shaped model), and past a quantized layer's kernel rows (the Python loop takes those batches)."""

from __future__ import annotations

import json

import pytest

import loomlm

TINY = {
    "num_layers": 2,
    "hidden_size": 128,
    "intermediate_size": 192,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 512,
}
PROMPTS = [list(range(10, 50)), list(range(60, 75)), [5, 6, 7], list(range(200, 290)), [9] * 30, list(range(1, 9))]
PARAMS = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}


def _outputs(engine: loomlm.Engine, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    engine.flush_cache()
    outs = engine.generate(input_ids=prompts, sampling_params=PARAMS, return_logprob=True)
    return [(o["output_ids"], [lp for lp, *_ in o["meta_info"]["output_token_logprobs"]]) for o in outs]


def _without_plan(engine: loomlm.Engine) -> None:
    """Mark the model's plan as not coverable: every decode step takes the Python loop."""
    runner = engine.runner
    engine.core.call(lambda: setattr(runner.model, "decode_plan", (runner.kv_pool, None)))


@pytest.mark.parametrize(
    "settings",
    [
        {"dtype": "float32", "cpu_linear": "torch"},
        {"dtype": "float32", "cpu_linear": "onednn"},
        {"dtype": "bfloat16", "cpu_linear": "onednn"},
        {"quantization": "int8"},
        {"quantization": "int4"},
        {"dtype": "float32", "cpu_linear": "torch", "architecture": "qwen2"},
    ],
    ids=["torch-fp32", "onednn-fp32", "onednn-bf16", "int8", "int4", "qwen2-bias"],
)
def test_the_decode_plan_equals_the_python_loop(settings):
    settings = dict(settings)
    overrides = {**TINY, "architecture": settings.pop("architecture", "llama")}
    if overrides["architecture"] == "qwen2":
        overrides["attention_bias"] = True
    with loomlm.Engine(
        load_format="dummy",
        json_model_override_args=json.dumps(overrides),
        max_total_tokens=2048,
        max_running_requests=8,
        random_seed=3,
        **settings,
    ) as engine:
        assert engine.runner.attention_backend == "cpu"
        # one at a time (batch 1, inside every kernel's row limit), then all together
        planned = [_outputs(engine, [p])[0] for p in PROMPTS] + _outputs(engine, PROMPTS)
        plan = engine.runner.model.decode_plan[1]
        assert plan is not None and plan.layers.num_layers == TINY["num_layers"]
        _without_plan(engine)
        looped = [_outputs(engine, [p])[0] for p in PROMPTS] + _outputs(engine, PROMPTS)
        engine.idle_integrity()
    assert planned == looped
