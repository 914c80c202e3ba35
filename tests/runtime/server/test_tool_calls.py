"""Tool calling through the OpenAI API (the real model, the official client) and the call parser."""

from __future__ import annotations

import contextlib
import json

import jsonschema
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.server.tool_call_formats import TOOL_CALL_PARSERS, tool_call_format
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
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
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


PIECES = {
    "hermes": ["<tool", "_call>", "<tool_call>", '{"name": "f", "arguments": {"x": 1}}', "</tool_call>", "<"],
    "llama3": ['{"na', 'me": ', '{"name": ', '"f", "parameters": {"x": 1}}', "; ", "{", "}"],
    "mistral": ["[TOOL", "_CALLS]", "[TOOL_CALLS]", '[{"name": "f", "arguments": {"x": 1}}]', "[", "]", "5"],
}
ONE_CALL = {
    "hermes": '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>',
    "llama3": '{"name": "f", "parameters": {"x": 1}}',
    "mistral": '[TOOL_CALLS][{"name": "f", "arguments": {"x": 1}}]',
}


@pytest.mark.parametrize("name", TOOL_CALL_PARSERS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_parser_gives_the_same_split_however_the_text_arrives(name, data):
    form = tool_call_format(name)
    pieces = data.draw(st.lists(st.sampled_from(["hi ", "x", " ", *PIECES[name]]), max_size=12))
    cuts = data.draw(st.lists(st.integers(0, 200), max_size=6))
    text = "".join(pieces)
    whole = ToolCallParser(form)
    content, _ = whole.feed(text)
    content += whole.finish()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    split, streamed = ToolCallParser(form), ""
    for a, b in zip(bounds, bounds[1:]):
        streamed += split.feed(text[a:b])[0]
    streamed += split.finish()
    assert streamed == content
    assert [c["function"] for c in split.calls] == [c["function"] for c in whole.calls]
    assert all(json.loads(c["function"]["arguments"]) == {"x": 1} for c in whole.calls)


@pytest.mark.parametrize("name", TOOL_CALL_PARSERS)
def test_each_format_reads_back_what_it_writes(name):
    form = tool_call_format(name)
    calls = [("f", {"x": 1}), ("g", {"s": "a</tool_call>]"})]
    parser = ToolCallParser(form)
    content, done = parser.feed("Sure. " + form.write(calls))
    content += parser.finish()
    assert (
        content.strip(form.separators) == "Sure."
        and [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in done] == calls
    )
    one = ToolCallParser(form)
    assert one.feed(ONE_CALL[name])[0] + one.finish() == "" and len(one.calls) == 1
    assert len({form.call_id() for _ in range(50)}) == 50


@pytest.mark.parametrize("parser", ["llama3", "mistral"])
def test_llama3_and_mistral_formats_constrain_and_parse_calls(engine, parser):
    """The other `--tool-call-parser` formats: the required call validates, streamed or not alike."""
    with Served(engine, tool_call_parser=parser) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        ask = dict(model="m", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
        out = client.chat.completions.create(**ask, max_tokens=80, temperature=0)
        assert out.choices[0].finish_reason == "tool_calls" and len(out.choices[0].message.tool_calls) == 1
        call = out.choices[0].message.tool_calls[0]
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        if parser == "mistral":
            assert len(call.id) == 9 and call.id.isalnum()
        deltas = [
            d
            for chunk in client.chat.completions.create(**ask, max_tokens=80, temperature=0, stream=True)
            for d in chunk.choices[0].delta.tool_calls or []
        ]
        assert [(d.function.name, d.function.arguments) for d in deltas] == [
            (call.function.name, call.function.arguments)
        ]
    engine.idle_integrity()


@contextlib.contextmanager
def chat_template(engine, template: str):
    old = engine.tokenizer.chat_template
    engine.tokenizer.chat_template = template
    try:
        yield
    finally:
        engine.tokenizer.chat_template = old


# One line, so that jinja's block trimming does not matter to the expected text.
TOOLS_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "CALL {{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}{% else %}{{ m.content }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_a_template_that_reads_tools_renders_them_itself(client, engine):
    """Tools, past calls (arguments as objects) and tool messages go to such a template as OpenAI gives
    them, with no tools prompt of loomlm's: the prompt is exactly the template's text."""
    history = [
        *ASK,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    ]
    expected = "<tools>get_weather;add;</tools>[user]What is the weather in Paris?[assistant]CALL get_weather(Paris)"
    expected += "[tool]18 C[assistant]"
    with chat_template(engine, TOOLS_TEMPLATE):
        out = client.chat.completions.create(
            model="m", messages=history, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0
        )
    assert out.usage.prompt_tokens == len(engine.tokenizer(expected)["input_ids"])
    call = out.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_templates_run_sandboxed(client, engine):
    """A template reaching for Python internals is refused (not run); one that raises over the
    conversation is the caller's 400 with the template's message."""
    with chat_template(engine, "{{ ''.__class__.__mro__[1].__subclasses__() }}"):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="m", messages=ASK, max_tokens=1)
    assert "sandbox" in info.value.body["message"]
    with chat_template(engine, "{{ raise_exception('roles must alternate user/assistant') }}"):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", messages=ASK, max_tokens=1)
    assert "roles must alternate" in info.value.body["message"]
