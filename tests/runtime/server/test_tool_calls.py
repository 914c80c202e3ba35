"""Tool calling through the OpenAI API (the real model, the official client) and the call parser."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.server.tool_calls import ToolCallParser
from tests.runtime.server.served import Served

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(engine):
    with Served(engine) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    engine.idle_integrity()


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_required_and_named_calls_validate_against_their_tool(client, choice):
    out = client.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=60, temperature=1.0, seed=7
    )
    choice_out = out.choices[0]
    assert choice_out.finish_reason == "tool_calls" and len(choice_out.message.tool_calls) == 1
    call = choice_out.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(choice, dict):
        assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_streamed_call_arrives_as_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0, stream=True
    )
    deltas, finishes = [], []
    for chunk in stream:
        deltas += chunk.choices[0].delta.tool_calls or []
        finishes.append(chunk.choices[0].finish_reason)
    assert finishes[-1] == "tool_calls" and [d.index for d in deltas] == [0]
    plain = client.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0
    )
    assert deltas[0].function.name == plain.choices[0].message.tool_calls[0].function.name
    assert deltas[0].function.arguments == plain.choices[0].message.tool_calls[0].function.arguments


def test_history_with_calls_and_results_is_accepted(client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 C and sunny"},
    ]
    out = client.chat.completions.create(model="m", messages=history, tools=TOOLS, max_tokens=8, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}
        )
    assert "nope" in info.value.body["message"]


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from(
            ["hi ", "<tool", "_call>", "<tool_call>", '{"name": "f", "arguments": {"x": 1}}', "</tool_call>", "<", "x"]
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_parser_gives_the_same_split_however_the_text_arrives(pieces, cuts):
    text = "".join(pieces)
    whole = ToolCallParser()
    content, _ = whole.feed(text)
    content += whole.finish()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    split, streamed = ToolCallParser(), ""
    for a, b in zip(bounds, bounds[1:]):
        streamed += split.feed(text[a:b])[0]
    streamed += split.finish()
    assert streamed == content
    assert [c["function"] for c in split.calls] == [c["function"] for c in whole.calls]
    assert all(json.loads(c["function"]["arguments"]) == {"x": 1} for c in whole.calls)
    if text == '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>':
        assert content == "" and len(whole.calls) == 1
