"""Structured output through the real engine and model: regex, choices, JSON schema, jump-forward, errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading

import jsonschema
import pytest

from loomlm.grammars import GrammarError

REGEXES = [
    r"\(\d{3}\) \d{3}-\d{4}",
    r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})",
    r"[A-Z][a-z]{2,8} (is|was) [a-z]{1,8}\.",
    r"\d{4}-\d{2}-\d{2}",
]

# 20 schemas. Strings carry maxLength and numbers bounds, so that every sample at temperature 1.0 ends
# within max_new_tokens (an unbounded digit run is a valid way for a small model to ramble).
S = {"type": "string", "maxLength": 12}
I = {"type": "integer", "minimum": -999, "maximum": 999}
SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"],
    },
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": S, "maxItems": 3}}, "required": ["tags"]},
    {
        "type": "object",
        "properties": {"score": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01}},
        "required": ["score"],
    },
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 120}}, "required": ["n"]},
    {"type": "object", "properties": {"date": {"type": "string", "format": "date"}}, "required": ["date"]},
    {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]},
    {"type": "object", "properties": {"ip": {"type": "string", "format": "ipv4"}}, "required": ["ip"]},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}, "required": ["when"]},
    {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": S}, "required": ["b"]}},
        "required": ["a"],
    },
    {"type": "object", "properties": {"name": S, "nick": S}, "required": ["name"]},
    {
        "type": "object",
        "properties": {"v": {"anyOf": [{"type": "integer", "minimum": -99, "maximum": 99}, {"type": "null"}]}},
        "required": ["v"],
    },
    {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
        "required": ["code"],
    },
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4},
    {
        "type": "object",
        "properties": {"pt": {"type": "array", "prefixItems": [I, I], "items": False}},
        "required": ["pt"],
    },
    {"type": "object", "properties": {"kind": {"const": "point"}, "x": I}, "required": ["kind", "x"]},
    {
        "$defs": {"p": {"type": "object", "properties": {"x": I}, "required": ["x"]}},
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/p"}, "end": {"$ref": "#/$defs/p"}},
        "required": ["start", "end"],
    },
    {"type": "object", "properties": {"at": {"type": "string", "format": "time"}}, "required": ["at"]},
    {
        "type": "object",
        "properties": {
            "level": {"type": "string", "enum": ["low", "high"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
            "note": {"type": ["string", "null"], "maxLength": 10},
        },
        "required": ["level", "count", "note"],
    },
]


def _frozen_clock() -> float:
    return 0.0


@pytest.fixture(autouse=True)
def _deterministic_grammar_budgets(engine, monkeypatch):
    """The shared engine's compiles here never race the wall clock (a busy machine must not fail a
    schema): time stands still for their budget, and the state limit still applies."""
    cache = engine.grammars
    monkeypatch.setattr(cache, "limits", dataclasses.replace(cache.limits, clock=_frozen_clock))


def _validate(text: str, schema: dict) -> None:
    """Parse and validate with the 2020-12 format checker (date, uuid, ipv4, ... are checked)."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(json.loads(text))


def _prompt(engine, what: str) -> str:
    return engine.apply_chat_template([{"role": "user", "content": what}])


def test_regex_outputs_fullmatch_and_text_equals_tokens(idle_engine, tokenizer) -> None:
    prompts = [
        _prompt(idle_engine, f"Write an example of {what}.")
        for what in ("a phone number", "an IP address", "a sentence", "a date")
    ]
    params = [{"regex": r, "max_new_tokens": 40, "temperature": 1.0, "seed": 3} for r in REGEXES]
    outs = idle_engine.generate(prompts, params)
    for out, pattern in zip(outs, REGEXES):
        assert re.fullmatch(pattern, out["text"]), (pattern, out["text"])
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
        assert tokenizer.decode(out["output_ids"]) == out["text"]


def test_choices_typed_and_n(idle_engine) -> None:
    outs = idle_engine.generate(
        _prompt(idle_engine, "Pick a fruit."),
        {"choices": ["apple", "banana", "cherry pie"], "temperature": 1.0, "n": 6},
    )
    assert all(o["text"] in ("apple", "banana", "cherry pie") for o in outs)
    stream = list(
        idle_engine.generate(
            _prompt(idle_engine, "Yes or no?"), {"choices": ["Yes", "No"], "temperature": 0}, stream=True
        )
    )
    assert "".join(c["text"] for c in stream) in ("Yes", "No") and stream[-1]["finished"]


def test_constrained_and_free_requests_share_batches(idle_engine) -> None:
    prompt = _prompt(idle_engine, "Tell me about the sea.")
    params = [
        {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True},
        {"regex": r"[a-z ]{5,30}\.", "max_new_tokens": 40, "temperature": 0},
        {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True},
        {"choices": ["calm", "rough"], "temperature": 0},
    ]
    outs = idle_engine.generate([prompt] * 4, params)
    assert len(outs[0]["output_ids"]) == 24 and len(outs[2]["output_ids"]) == 24
    assert outs[0]["text"] == outs[2]["text"]  # same prompt, greedy: unconstrained identical
    assert re.fullmatch(r"[a-z ]{5,30}\.", outs[1]["text"]) and outs[3]["text"] in ("calm", "rough")
    alone = idle_engine.generate(prompt, params[0])
    assert alone["text"] == outs[0]["text"]  # masks never touch unconstrained rows


def test_json_schemas_validate_at_temperature_one(idle_engine) -> None:
    prompts, params = [], []
    for schema in SCHEMAS:
        prompt = _prompt(idle_engine, f"Reply with JSON matching this schema: {json.dumps(schema)}")
        prompts.append(prompt)
        params.append({"json_schema": schema, "max_new_tokens": 200, "temperature": 1.0, "n": 3, "seed": 11})
    outs = idle_engine.generate(prompts, params)
    assert len(outs) == 3 * len(SCHEMAS)
    for i, out in enumerate(outs):
        schema = SCHEMAS[i // 3]
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        _validate(out["text"], schema)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"regex": "(("}, "invalid regex"),
        ({"regex": "^abc$"}, "anchors"),
        ({"json_schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}, "strin"),
        ({"json_schema": {"type": "array", "uniqueItems": True}}, "uniqueItems"),
        ({"json_schema": {"type": "string", "minLength": 5, "maxLength": 2}}, "minLength"),
        ({"regex": r"[ab]*a[ab]{20}"}, "max_states"),
    ],
)
def test_bad_grammars_are_rejected_and_the_engine_keeps_serving(idle_engine, params, words) -> None:
    with pytest.raises(GrammarError, match=re.escape(words)):
        idle_engine.generate("hi", {**params, "max_new_tokens": 4})
    out = idle_engine.generate("hi", {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True})
    assert len(out["output_ids"]) == 3


def test_bad_constraint_parameters_name_the_field(idle_engine) -> None:
    with pytest.raises(ValueError, match="regex and choices"):
        idle_engine.generate("hi", {"regex": "a", "choices": ["a"]})
    with pytest.raises(ValueError, match="choices"):
        idle_engine.generate("hi", {"choices": []})
    with pytest.raises(ValueError, match="json_schema is not valid JSON"):
        idle_engine.generate("hi", {"json_schema": "{nope"})


def test_async_generate_waits_for_its_grammar(idle_engine) -> None:
    async def run():
        good = idle_engine.async_generate("Count:", {"regex": r"[1-9]{3}", "temperature": 0})
        bad = idle_engine.async_generate("Count:", {"regex": "a{2,1}"})
        return await asyncio.gather(good, bad, return_exceptions=True)

    good, bad = asyncio.run(run())
    assert re.fullmatch(r"[1-9]{3}", good["text"]) and isinstance(bad, GrammarError)


def test_jump_forward_saves_forward_passes_and_stays_valid(idle_engine) -> None:
    import loomlm

    schemas = [SCHEMAS[i] for i in (0, 2, 6, 10, 16, 17, 19)]
    no_jump = loomlm.Engine(
        max_total_tokens=20000,
        random_seed=1,
        disable_jump_forward=True,
        grammar_timeout_s=idle_engine.config.grammar_timeout_s,
    )
    try:
        passes = {}
        for name, eng in (("on", idle_engine), ("off", no_jump)):
            before = eng.get_stats()
            for schema in schemas:  # one at a time: forward passes per request are comparable
                out = eng.generate(
                    _prompt(eng, f"Reply with JSON for: {json.dumps(schema)}"),
                    {"json_schema": schema, "max_new_tokens": 200, "temperature": 0},
                )
                _validate(out["text"], schema)
            after = eng.get_stats()
            passes[name] = after["forward_passes"] - before["forward_passes"]
            jumped = after["jump_forward_tokens"] - before["jump_forward_tokens"]
            assert (jumped > 0) == (name == "on")
        no_jump.idle_integrity()
    finally:
        no_jump.shutdown()
    assert 1 - passes["on"] / passes["off"] >= 0.3, passes


def _gate_compile(monkeypatch, engine, slow_spec):
    """Make the engine's grammar cache block the compile of `slow_spec` until the returned event is set
    (the compile itself is the real one). Returns (started, release) events."""
    from loomlm.grammars import compile_spec

    started, release = threading.Event(), threading.Event()

    def gated(spec, *args):
        if spec == slow_spec:
            started.set()
            release.wait()
        return compile_spec(spec, *args)

    monkeypatch.setattr(engine.grammars, "compiler", gated)
    return started, release


def test_a_slow_compile_does_not_block_other_requests(idle_engine, monkeypatch) -> None:
    """Deterministic: the "slow" compile blocks on an event until the other requests are served."""
    from loomlm.grammars import GrammarSpec

    slow = r'"[^"]{0,7}" \(slow\)'  # a spec no other test compiles: its compile really runs here
    started, release = _gate_compile(monkeypatch, idle_engine, GrammarSpec("regex", slow))
    result: dict = {}

    def waiter() -> None:
        try:
            result["out"] = idle_engine.generate("Quote:", {"regex": slow, "max_new_tokens": 16, "temperature": 0})
        except Exception as exc:  # reported by the main thread rather than lost in this one
            result["error"] = exc

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        assert started.wait(60)
        future = idle_engine.grammars.get(GrammarSpec("regex", slow))  # the compile the thread waits on
        out = idle_engine.generate("hi", {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True})
        assert len(out["output_ids"]) == 4
        other = idle_engine.generate("Pick:", {"choices": ["up", "down"], "temperature": 0})
        assert other["text"] in ("up", "down")  # another grammar compiles and decodes meanwhile
        assert not future.done() and thread.is_alive()
    finally:
        release.set()
        thread.join(120)
    assert "error" not in result, result
    assert re.fullmatch(r'"[^"]{0,7}" \(slow\)', result["out"]["text"]), result


def test_a_compile_that_overruns_its_budget_fails_cleanly(idle_engine, monkeypatch) -> None:
    """A compile past its time budget: the caller gets a GrammarError, the engine keeps serving, and the
    failure is not cached (it depends on the machine), so the same grammar compiles when sent again."""
    from loomlm.grammars import GrammarTimeoutError, compile_spec

    calls = []

    def overrun_once(spec, *args):
        calls.append(spec)
        if len(calls) == 1:
            raise GrammarTimeoutError("compiling regex took longer than the budget of 10 s (GrammarLimits.max_seconds)")
        return compile_spec(spec, *args)

    monkeypatch.setattr(idle_engine.grammars, "compiler", overrun_once)
    params = {"regex": r"[0-9]{2} \(overrun\)", "max_new_tokens": 16, "temperature": 0}
    with pytest.raises(GrammarError, match="max_seconds"):
        idle_engine.generate("Count:", params)
    out = idle_engine.generate("hi", {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True})
    assert len(out["output_ids"]) == 3
    again = idle_engine.generate("Count:", params)
    assert re.fullmatch(r"[0-9]{2} \(overrun\)", again["text"]) and len(calls) == 2
