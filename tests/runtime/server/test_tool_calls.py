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
from loomlm.runtime.server.tool_call_parser import ToolCallParser
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
    """OpenAI's streamed shape: the index, id and name first (empty arguments), then the arguments'
    text in fragments as the model writes them; put together, the call the whole answer has."""
    stream = client.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0, stream=True
    )
    deltas, finishes = [], []
    for chunk in stream:
        deltas += chunk.choices[0].delta.tool_calls or []
        finishes.append(chunk.choices[0].finish_reason)
    assert finishes[-1] == "tool_calls" and {d.index for d in deltas} == {0}
    head, *fragments = deltas
    assert head.id.startswith("call_") and head.type == "function" and head.function.arguments == ""
    assert len(fragments) > 1 and all(d.id is None and d.function.name is None for d in fragments)
    plain = client.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0
    )
    call = plain.choices[0].message.tool_calls[0]
    assert head.function.name == call.function.name
    assert "".join(d.function.arguments for d in fragments) == call.function.arguments
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


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


# Pieces of calls written in other orders or cut in odd places (each format's parser must agree with itself).
ODD = ['{"arguments": {"x": 1}, "name": "f"}', '{"name": "f", ', '"arguments": ', '{"x": 1}', "}", ", "]
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


def _parse(form, pieces: list[str]) -> tuple[str, list[dict], list[dict]]:
    """(content, deltas, calls) of text fed piece by piece."""
    parser, content, deltas = ToolCallParser(form), "", []
    for piece in pieces:
        more, new = parser.feed(piece)
        content, deltas = content + more, deltas + new
    rest, last = parser.finish()
    return content + rest, deltas + last, parser.calls


def _joined(deltas: list[dict]) -> list[tuple[str, str]]:
    """(name, arguments) of each call put together from its deltas; a call's first delta has its id."""
    calls: dict[int, list[str]] = {}
    for d in deltas:
        if "id" in d:
            assert d["index"] == len(calls) and d["index"] not in calls
            calls[d["index"]] = [d["function"]["name"], d["function"]["arguments"]]
        else:
            calls[d["index"]][1] += d["function"]["arguments"]
    return [tuple(calls[i]) for i in sorted(calls)]


@pytest.mark.parametrize("name", TOOL_CALL_PARSERS)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_parser_gives_the_same_split_however_the_text_arrives(name, data):
    """Oracle: the text fed whole. Fed in any pieces, the content, the calls and the calls put together
    from the streamed deltas are the same."""
    form = tool_call_format(name)
    pieces = data.draw(st.lists(st.sampled_from(["hi ", "x", " ", *PIECES[name], *ODD]), max_size=12))
    cuts = data.draw(st.lists(st.integers(0, 200), max_size=6))
    text = "".join(pieces)
    content, deltas, calls = _parse(form, [text])
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    streamed, split_deltas, split_calls = _parse(form, [text[a:b] for a, b in zip(bounds, bounds[1:])])
    assert streamed == content
    wanted = [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in split_calls] == wanted
    assert _joined(split_deltas) == _joined(deltas) == wanted
    if text in ONE_CALL.values():
        assert content == "" and [json.loads(a) for _, a in wanted] == [{"x": 1}]


@pytest.mark.parametrize("name", TOOL_CALL_PARSERS)
def test_each_format_reads_back_what_it_writes(name):
    form = tool_call_format(name)
    calls = [("f", {"x": 1}), ("g", {"s": "a</tool_call>]"})]
    content, deltas, done = _parse(form, ["Sure. " + form.write(calls)])
    assert content.strip(form.separators) == "Sure."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in done] == calls
    assert [(n, json.loads(a)) for n, a in _joined(deltas)] == calls
    content, _, one = _parse(form, [ONE_CALL[name]])
    assert content == "" and len(one) == 1
    assert len({form.call_id() for _ in range(50)}) == 50


@pytest.mark.parametrize("name", TOOL_CALL_PARSERS)
def test_arguments_stream_character_by_character_and_a_cut_call_keeps_its_text(name):
    """Fed one character at a time, the header comes as soon as the name is complete, the arguments
    follow as written; a call cut off (the length limit) is still a call with the text it had."""
    form = tool_call_format(name)
    text = form.write([("get_weather", {"city": "Paris", "unit": "C"})])
    content, deltas, calls = _parse(form, list(text))
    assert content.strip(form.separators) == "" and len(calls) == 1
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(d["function"]["arguments"] for d in deltas[1:]) == calls[0]["function"]["arguments"]
    assert len(deltas) > 10 and json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "C"}
    cut = text[: text.index("Paris") + 3]
    content, deltas, calls = _parse(form, list(cut))
    assert content == "" and calls[0]["function"]["arguments"].endswith('"Par')
    assert _joined(deltas) == [("get_weather", calls[0]["function"]["arguments"])]


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
        joined = _joined([d.model_dump(exclude_none=True) for d in deltas])
        assert joined == [(call.function.name, call.function.arguments)] and len(deltas) > 2
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
