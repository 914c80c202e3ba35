"""schemathesis against the server's own `/openapi.json`: requests generated from every operation's
schema, valid ones and invalid ones, sent to a real server on loopback. None may get a 5xx, every error
is OpenAI's error body, and the server is healthy and idle afterwards.

The engine has dummy weights of a tiny shape over the default model's tokenizer and a short context, so
the generated requests (any sampling parameters, up to the whole context) cost milliseconds each; the
routes, validation and the engine's checks are the real ones.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

import loomlm
from tests.conftest import NO_GRAMMAR_DEADLINE
from tests.runtime.server.served import Served

TINY = {"num_layers": 1, "hidden_size": 64, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 1, "head_dim": 32}
EXAMPLES = 40  # per operation and mode; derandomized, so every run sends the same requests


@pytest.fixture(scope="module")
def served():
    engine = loomlm.Engine(
        load_format="dummy",
        json_model_override_args=json.dumps(TINY),
        context_length=96,
        max_total_tokens=4000,
        max_running_requests=8,
        grammar_timeout_s=NO_GRAMMAR_DEADLINE,
    )
    try:
        with Served(engine) as server:
            yield server
        engine.idle_integrity()
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def schema(served):
    return schemathesis.openapi.from_url(served.url + "/openapi.json")


def _cases() -> list:
    """(operation label, mode) for every operation of the app's schema (read without a server), the
    negative mode only where the operation takes input that can be made invalid."""
    from loomlm.runtime.server.app import build_app

    class _NoEngine:  # build_app only reads the engine's config for the queue limit
        config = loomlm.EngineConfig()

    paths = build_app(_NoEngine()).openapi()["paths"]
    cases = []
    for path, item in sorted(paths.items()):
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            cases.append(pytest.param(label, GenerationMode.POSITIVE, id=f"{label}-positive"))
            if operation.get("requestBody") or operation.get("parameters"):
                cases.append(pytest.param(label, GenerationMode.NEGATIVE, id=f"{label}-negative"))
    return cases


@pytest.mark.parametrize(("label", "mode"), _cases())
def test_generated_requests_get_no_server_error(served, schema, label, mode):
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == label)
    answers: list[tuple[int, str, object]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: schemathesis.Case) -> None:
        response = case.call(base_url=served.url, timeout=120)
        answers.append((response.status_code, response.text, case.body))
        assert response.status_code < 500, (response.status_code, response.text, case.body)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"] and error["code"] == response.status_code

    send()
    assert answers
    with httpx.Client(base_url=served.url, timeout=120) as http:
        assert http.get("/health").status_code == 200 and http.get("/health_generate").status_code == 200
        for _ in range(6000):  # a bound on polls of server state, not a timer
            if http.get("/get_load").json()[0]["num_reqs"] == 0:
                break
        assert http.get("/get_load").json()[0]["num_reqs"] == 0


_TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
_NUMBER = st.one_of(st.floats(-3, 3), st.just(float("nan")), st.just(float("inf")), st.booleans(), _TEXT)
# Each sampling parameter near and across the edge of its domain (see runtime/sampling_params.py).
_SAMPLING_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.one_of(st.integers(-2, 120), st.just(10**12)),
        "min_new_tokens": st.integers(-1, 10),
        "temperature": _NUMBER,
        "top_p": _NUMBER,
        "top_k": st.integers(-2, 60000),
        "min_p": _NUMBER,
        "frequency_penalty": _NUMBER,
        "presence_penalty": _NUMBER,
        "repetition_penalty": _NUMBER,
        "stop": st.one_of(st.none(), _TEXT, st.lists(_TEXT, max_size=3), st.integers()),
        "stop_token_ids": st.lists(st.integers(-5, 60000), max_size=3),
        "ignore_eos": st.one_of(st.booleans(), st.integers(0, 2)),
        "seed": st.one_of(st.none(), st.integers(-(2**70), 2**70)),
        "n": st.integers(-1, 3),
        "regex": st.sampled_from([r"\d{1,4}", "[a-z]+!", "(", "a{3,1}", ""]),
        "json_schema": st.sampled_from(
            [{"type": "integer"}, {"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "nope"}, "{"]
        ),
        "choices": st.lists(_TEXT, max_size=3),
        "ebnf": st.sampled_from(['start: "yes" | "no"', "start: missing_rule", "start: ("]),
        "spaces_between_special_tokens": st.booleans(),
    },
)


@settings(max_examples=EXAMPLES * 2, deadline=None, derandomize=True, database=None)
@given(params=_SAMPLING_PARAMS, stream=st.booleans(), by_ids=st.booleans())
def test_fuzzed_sampling_parameters_are_answered_or_refused_by_name(served, params, stream, by_ids):
    """/generate over sampling parameters in and out of their domains: a 200 with text, or a 400 whose
    message names the offending field; never a 5xx, never a broken stream."""
    body = {"input_ids": [5, 6, 7]} if by_ids else {"text": "Hi"}
    body |= {"sampling_params": params, "stream": stream}
    with httpx.Client(base_url=served.url, timeout=120) as http:
        answer = http.post("/generate", content=json.dumps(body), headers={"content-type": "application/json"})
        assert answer.status_code in (200, 400), answer.text
        if answer.status_code == 400:
            message = answer.json()["error"]["message"]
            assert any(name in message for name in params) or "sampling" in message, message
        elif stream:
            assert answer.text.rstrip().endswith("data: [DONE]")
