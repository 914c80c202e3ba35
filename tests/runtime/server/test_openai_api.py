"""The OpenAI API of a real server on loopback, driven by the official `openai` client (sync and async)."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest

from tests.runtime.server.served import Served

CHAT = [{"role": "user", "content": "Say hi"}]
SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["color", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(engine):
    with Served(engine) as served:
        yield served
    engine.idle_integrity()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def test_chat_streamed_equals_non_streamed_with_usage(client):
    plain = client.chat.completions.create(model="m", messages=CHAT, max_tokens=12, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=CHAT, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    for usage in (plain.usage, chunks[-1].usage):
        assert usage.completion_tokens == 12 and usage.total_tokens == usage.prompt_tokens + 12
    assert chunks[-2].choices[0].finish_reason == "length"
    # the second request found the first one's prompt in the prefix cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= plain.usage.prompt_tokens - 1


def test_json_schema_response_validates(client):
    out = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "A color and a digit as JSON"}],
        max_tokens=40,
        temperature=1.0,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True}},
    )
    jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)
    assert out.choices[0].finish_reason == "stop"


def test_n_choices_with_a_seed_repeat_and_add_up(client):
    ask = dict(model="m", prompt="The capital of France is", max_tokens=6, n=3, seed=5, temperature=1.0)
    first, again = client.completions.create(**ask), client.completions.create(**ask)
    texts = [c.text for c in first.choices]
    assert len(texts) == 3 and [c.text for c in again.choices] == texts and len(set(texts)) > 1
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert first.usage.completion_tokens == 18 and first.usage.prompt_tokens == again.usage.prompt_tokens
    streamed = client.completions.create(**ask, stream=True)
    pieces = ["", "", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            pieces[choice.index] += choice.text
    assert pieces == texts  # one engine stream per choice, seeded as the non-streamed copies


def test_async_client_streams_a_completion(server):
    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0) as aclient:
            ask = dict(model="m", prompt="Once upon a time", max_tokens=10, temperature=0)
            plain = await aclient.completions.create(**ask)
            text = "".join([c.choices[0].text async for c in await aclient.completions.create(**ask, stream=True)])
            return plain.choices[0].text, text

    plain, streamed = asyncio.run(run())
    assert plain == streamed and plain


def test_completion_logprobs_and_echo(client, engine):
    out = client.completions.create(model="m", prompt="Hello world", max_tokens=3, temperature=0, logprobs=2, echo=True)
    choice = out.choices[0]
    prompt_len = len(engine.tokenizer("Hello world")["input_ids"])
    assert choice.text.startswith("Hello world")
    assert len(choice.logprobs.tokens) == prompt_len + 3 and choice.logprobs.token_logprobs[0] is None
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs[1:])


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"grammar_x": "a"}, ["grammar_x"]),
        ({"json_schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}, ["strng"]),
        ({"regex": "(unclosed"}, ["regex"]),
        ({"temperature": -1}, ["temperature"]),
        ({"stream_options": {"include_usage": True}}, ["stream_options"]),
        ({"tools": [{"type": "retrieval"}]}, ["tool"]),
        ({"tool_choice": "required"}, ["tool_choice needs tools"]),
    ],
)
def test_bad_requests_are_400_with_openai_error_bodies(client, extra, words):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=CHAT, max_tokens=4, extra_body=extra)
    error = info.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert all(w in error["message"] for w in words), error


def test_prompt_over_the_context_and_unknown_routes(server, engine):
    too_long = list(range(10, 10 + engine.context_length + 5))
    answer = httpx.post(server.url + "/v1/completions", json={"prompt": too_long, "max_tokens": 1})
    assert answer.status_code == 400 and "context length" in answer.json()["error"]["message"]
    missing = httpx.get(server.url + "/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    assert httpx.post(server.url + "/v1/completions", content=b"{not json").status_code == 400


def test_vllm_constraint_names_constrain_the_output(client):
    picked = client.chat.completions.create(
        model="m", messages=CHAT, max_tokens=5, temperature=0, extra_body={"guided_choice": ["alpha", "beta"]}
    )
    assert picked.choices[0].message.content in ("alpha", "beta")
    digits = client.completions.create(
        model="m", prompt="Year:", max_tokens=8, temperature=0, extra_body={"guided_regex": r"[12]\d{3}"}
    )
    assert len(digits.choices[0].text) == 4 and digits.choices[0].text.isdigit()
    shaped = client.chat.completions.create(
        model="m", messages=CHAT, max_tokens=40, temperature=0, extra_body={"guided_json": SCHEMA}
    )
    jsonschema.validate(json.loads(shaped.choices[0].message.content), SCHEMA)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=CHAT, max_tokens=4, extra_body={"regex": "a", "guided_regex": "b"}
        )
    assert info.value.body["param"] == "guided_regex"


def test_a_named_request_is_aborted_by_its_rid(server):
    """`rid` names the engine request, so `/abort_request` stops it: the stream ends with an error event
    saying so, then [DONE], and nothing is left running."""
    body = {"model": "m", "prompt": "Count:", "max_tokens": 1500, "ignore_eos": True, "stream": True, "rid": "r-abort"}
    with httpx.Client(base_url=server.url, timeout=120) as http:
        with http.stream("POST", "/v1/completions", json=body) as answer:
            lines = answer.iter_lines()
            assert json.loads(next(line for line in lines if line.startswith("data: "))[6:])["choices"]
            assert http.post("/abort_request", json={"rid": "r-abort"}).status_code == 200
            rest = [line[6:] for line in lines if line.startswith("data: ")]
        assert rest[-1] == "[DONE]" and "aborted" in json.loads(rest[-2])["error"]["message"]
        for _ in range(10_000):  # a bound on polls of server state, not a timer
            if http.get("/get_load").json()[0]["num_reqs"] == 0:
                break
        assert http.get("/get_load").json()[0]["num_reqs"] == 0
