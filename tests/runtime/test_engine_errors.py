"""Bad input gets a clear ValueError naming the problem, and the engine keeps serving."""

from __future__ import annotations

import pytest

import loomlm

OK = {"max_new_tokens": 4, "temperature": 0}


def test_unknown_model_path():
    with pytest.raises(ValueError, match="/no/such/model.gguf"):
        loomlm.Engine(model_path="/no/such/model.gguf")


def test_unknown_engine_argument():
    with pytest.raises(ValueError, match="max_total_tokenz"):
        loomlm.Engine(max_total_tokenz=100)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temprature": 0.5}, "temprature"),
        ({"top_k": 0.5}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"n": 0}, "n"),
    ],
)
def test_bad_sampling_params_name_the_field(idle_engine, params, field):
    with pytest.raises(ValueError, match=field):
        idle_engine.generate("Hello", params)
    assert idle_engine.generate("Hello", OK)["meta_info"]["completion_tokens"] == 4


def test_prompt_longer_than_context(idle_engine):
    long_prompt = "hello " * (idle_engine.context_length + 10)
    with pytest.raises(ValueError, match="context length"):
        idle_engine.generate(long_prompt, OK)
    # A batch with one bad prompt is rejected whole, before anything is queued.
    with pytest.raises(ValueError, match="context length"):
        idle_engine.generate(["Hi", long_prompt], OK)
    assert idle_engine.generate("Hi", OK)["meta_info"]["completion_tokens"] == 4


def test_bad_input_ids_and_logprob_options(idle_engine):
    with pytest.raises(ValueError, match="input_ids"):
        idle_engine.generate(input_ids=[1, 2, 10**9], sampling_params=OK)
    with pytest.raises(ValueError, match="empty"):
        idle_engine.generate("", OK)
    with pytest.raises(ValueError, match="exactly one of prompt and input_ids"):
        idle_engine.generate("Hi", OK, input_ids=[1, 2])
    with pytest.raises(ValueError, match="top_logprobs_num"):
        idle_engine.generate("Hi", OK, return_logprob=True, top_logprobs_num=-2)


def test_bad_request_options(idle_engine):
    for kwargs, field in (
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"cache_salt": 3}, "cache_salt"),
        ({"rid": 7}, "rid"),
    ):
        with pytest.raises(ValueError, match=field):
            idle_engine.generate("Hi", {"max_new_tokens": 1}, **kwargs)
    assert idle_engine.generate("Hi", {"max_new_tokens": 1}, priority=-3)["meta_info"]["completion_tokens"] == 1


def test_request_larger_than_pool():
    with loomlm.Engine(max_total_tokens=64, random_seed=0) as eng:
        with pytest.raises(ValueError, match="KV slots"):
            eng.generate("Hello there", {"max_new_tokens": 100})
        assert eng.generate("Hello there", {"max_new_tokens": 8})["meta_info"]["completion_tokens"] <= 8
        eng.idle_integrity()


def test_bad_engine_config_values():
    with pytest.raises(ValueError, match="dtype"):
        loomlm.EngineConfig(dtype="float8")
    with pytest.raises(ValueError, match="load_format"):
        loomlm.EngineConfig(load_format="pickle")
    with pytest.raises(ValueError, match="attention_backend"):
        loomlm.EngineConfig(attention_backend="flash")
    with pytest.raises(ValueError, match="schedule_policy"):
        loomlm.EngineConfig(schedule_policy="lifo")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="chunked_prefill_size"):
            loomlm.EngineConfig(chunked_prefill_size=bad)
    with pytest.raises(ValueError, match="disable_radix_cache"):
        loomlm.EngineConfig(disable_radix_cache="yes")


def test_cache_flags_parse_from_the_command_line():
    import argparse

    from loomlm.runtime.arg_parser import add_engine_arguments, engine_config_from_args

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    config = engine_config_from_args(
        parser.parse_args(["--disable-radix-cache", "--schedule-policy", "dfs-weight", "--chunked-prefill-size", "-1"])
    )
    assert (config.disable_radix_cache, config.schedule_policy, config.chunked_prefill_size) == (True, "dfs-weight", -1)
    assert config.prefill_token_budget() == config.max_prefill_tokens
    default = engine_config_from_args(parser.parse_args([]))
    assert default.disable_radix_cache is False and default.prefill_token_budget() == 2048


def test_failed_step_aborts_its_requests_and_engine_goes_on(idle_engine, monkeypatch):
    runner = idle_engine.runner
    real_forward = runner.forward
    calls = {"n": 0}

    def failing_forward(batch):
        calls["n"] += 1
        if calls["n"] == 3:  # a decode step of the running request
            raise RuntimeError("injected fault")
        return real_forward(batch)

    monkeypatch.setattr(runner, "forward", failing_forward)
    out = idle_engine.generate("Hello", {"max_new_tokens": 10, "ignore_eos": True})
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert "injected fault" in out["meta_info"]["finish_reason"]["message"]
    assert out["meta_info"]["completion_tokens"] == 2
    monkeypatch.setattr(runner, "forward", real_forward)
    assert idle_engine.generate("Hello", OK)["meta_info"]["completion_tokens"] == 4


def test_context_length_beyond_the_model():
    with pytest.raises(ValueError, match="context_length 100000"):
        loomlm.Engine(context_length=100000)
