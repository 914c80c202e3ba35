"""One library of frontend programs with their checks, run against every backend.

Each `check_*` function takes a backend, runs its program(s) on it and asserts what must hold whatever
the backend (in-process engine, HTTP endpoint): outputs obey their constraints, variables, messages and
streams agree with the program text. `CASES` lists them for parametrised tests.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import loomlm as sgl

SHOTS = [
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Germany?", "Berlin"),
]


@sgl.function
def few_shot_qa(s, question):
    s += "Answer each question with the name of a city.\n\n"
    for q, a in SHOTS:
        s += f"Question: {q}\nAnswer: {a}\n\n"
    s += f"Question: {question}\nAnswer:"
    s += sgl.select("answer", choices=[" Paris", " London", " Tokyo"])
    s += "\nExplanation:" + sgl.gen("why", max_tokens=12, stop="\n")


def check_few_shot(backend: Any) -> None:
    state = few_shot_qa.run(question="What is the capital of France?", backend=backend, temperature=0)
    assert state["answer"] == " Paris"
    assert state.text().endswith(state["why"])
    assert "\n" not in state["why"]


@sgl.function
def pick_color(s):
    s += "Q: What color is the sky on a clear day?\nA: The sky is"
    s += sgl.gen("color", choices=[" blue", " green", " purple"])


def check_select(backend: Any) -> None:
    state = pick_color.run(backend=backend)
    meta = state.get_meta_info("color")
    scores = meta["normalized_prompt_logprobs"]
    assert state["color"] == [" blue", " green", " purple"][scores.index(max(scores))]
    assert state.text().endswith("The sky is" + state["color"])


@sgl.function
def phone(s):
    s += "Call me at: "
    s += sgl.gen("number", regex=r"\(\d{3}\) \d{3}-\d{4}", max_tokens=20)


def check_regex(backend: Any) -> None:
    state = phone.run(backend=backend, temperature=0.8)
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", state["number"]), state["number"]


CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
    },
    "required": ["name", "population"],
}


@sgl.function
def city_json(s, city):
    with s.user():
        s += f"Describe {city} as JSON with its name and population."
    with s.assistant():
        s += sgl.gen("json", json_schema=CITY_SCHEMA, max_tokens=48)
    s += sgl.gen_int("year", max_tokens=6)


def check_json_and_dtype(backend: Any) -> None:
    state = city_json.run(city="Paris", backend=backend, temperature=0)
    value = json.loads(state["json"])
    assert set(value) == {"name", "population"} and isinstance(value["population"], int)
    assert re.fullmatch(r"[-+]?[0-9]+", state["year"])


@sgl.function
def two_tips(s):
    s += "Here are three tips for staying healthy: 1. Eat well. 2. Exercise. 3. Sleep.\n"
    forks = s.fork(3)
    forks += lambda i: f"Tip {i + 1} in one sentence:"
    forks += sgl.gen("tip", max_tokens=8, stop="\n")
    forks.join()
    s += "Done."


def check_fork_join(backend: Any) -> None:
    state = two_tips.run(backend=backend, temperature=0)
    tips = state["tip"]
    assert isinstance(tips, list) and len(tips) == 3 and all(isinstance(t, str) for t in tips)
    assert state.text().endswith("Sleep.\nDone.")


@sgl.function
def fork_concat(s):
    s += "Two facts:\n"
    forks = s.fork(2)
    forks += lambda i: f"Fact {i + 1}:"
    forks += sgl.gen("fact", max_tokens=6, stop="\n")
    forks += "\n"
    forks.join("concate_and_append")
    s += "End."
    return forks


def check_fork_concat(backend: Any) -> None:
    state = fork_concat.run(backend=backend, temperature=0)
    first, second = (branch["fact"] for branch in state.ret_value)
    assert state.text() == f"Two facts:\nFact 1:{first}\nFact 2:{second}\nEnd."


@sgl.function
def chat(s, question):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=16))
    s += sgl.user("Thanks! And in one word?")
    s += sgl.assistant(sgl.gen("short", max_tokens=4))


def check_roles(backend: Any) -> None:
    state = chat.run(question="What is the capital of France?", backend=backend, temperature=0)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == state["answer"] and messages[4]["content"] == state["short"]
    assert state.text() == backend.chat_template.render(messages)


def check_streaming(backend: Any) -> None:
    state = chat.run(question="Name a fruit.", backend=backend, temperature=0, stream=True)
    chunks = list(state.text_iter("answer"))
    assert "".join(chunks) == state["answer"]
    assert "".join(state.text_iter()) == state.text()

    async def collect() -> list[tuple[str, Any]]:
        return [item async for item in state.text_async_iter("short", return_meta_data=True)]

    pairs = asyncio.run(collect())
    assert "".join(text for text, _ in pairs) == state["short"]
    completions = [meta["completion_tokens"] for _, meta in pairs]
    assert completions == sorted(completions) and completions[-1] == state.get_meta_info("short")["completion_tokens"]


def check_stream_logprobs(backend: Any) -> None:
    state = phone.run(backend=backend, temperature=0, stream=True, return_logprob=True)
    chunks = list(state.text_iter("number"))
    assert len(chunks) > 1 and "".join(chunks) == state["number"]
    meta = state.get_meta_info("number")
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]


@sgl.function
def capital(s, country):
    s += sgl.user(f"What is the capital of {country}? One word.")
    s += sgl.assistant(sgl.gen("answer", max_tokens=6))


def check_run_batch(backend: Any) -> None:
    countries = ["France", "Japan", "Italy", "Egypt"]
    states = capital.run_batch([{"country": c} for c in countries], backend=backend, temperature=0)
    assert len(states) == 4
    for country, state in zip(countries, states):
        assert f"capital of {country}" in state.text() and state.error() is None
        assert state.text().endswith(state["answer"] + backend.chat_template.suffix("assistant"))


@sgl.function
def scoped(s):
    s += "List: "
    with s.var_scope("items"):
        s += "apples, " + sgl.gen(max_tokens=4, stop="\n") + "."
    s += " That's all."


def check_var_scope(backend: Any) -> None:
    state = scoped.run(backend=backend, temperature=0)
    assert state["items"].startswith("apples, ") and state["items"].endswith(".")
    assert state.text() == "List: " + state["items"] + " That's all."


@sgl.function
def long_enough(s):
    s += "Say hi."
    s += sgl.gen("reply", min_tokens=6, max_tokens=8)


def check_min_tokens(backend: Any) -> None:
    state = long_enough.run(backend=backend, temperature=0)
    assert 6 <= state.get_meta_info("reply")["completion_tokens"] <= 8


CASES: list[Callable[[Any], None]] = [
    check_few_shot,
    check_select,
    check_regex,
    check_json_and_dtype,
    check_fork_join,
    check_fork_concat,
    check_roles,
    check_streaming,
    check_stream_logprobs,
    check_run_batch,
    check_var_scope,
    check_min_tokens,
]
