"""Every program in `examples/` runs, in process, on the session engine, and its output has the property
the example is about: streamed pieces add up to the answer, a select answer is one of the choices, a
fork tree gathers one variable per branch, JSON parses into the pydantic model, the agent's tool calls
show up as observations, chat messages alternate roles, a batch keeps its order.

Each example's `main(argv, backend=...)` takes the shared backend, so the model is loaded once.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import loomlm as sgl
from loomlm.lang.backends.local import LocalBackend

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as a module (examples/ is not a package; its scripts import their shared
    `_runner` helper from their own folder, as `python examples/<name>.py` allows)."""
    module_name = f"loomlm_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(EXAMPLES) not in sys.path:
        sys.path.append(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def local(engine):
    return LocalBackend(engine)


@pytest.fixture
def backend(local, idle_engine):
    """The shared backend; the examples set it as default, so the previous default is put back."""
    previous = sgl.get_default_backend()
    yield local
    sgl.set_default_backend(previous)


def test_every_example_has_a_test():
    tested = {"quickstart", "few_shot", "tree_of_thought", "json_extraction", "react_agent", "multi_turn_chat", "batch"}
    assert {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")} == tested


def test_quickstart_streams_the_answer(backend, capsys):
    state = load_example("quickstart").main(["--max-tokens", "16"], backend=backend)
    answer = state["answer"]
    pieces = list(state.text_iter("answer"))  # the log of increments is kept: replay it
    assert "".join(pieces) == answer and answer.strip()
    assert len([p for p in pieces if p]) >= 2, "the answer did not arrive token by token"
    meta = state.get_meta_info("answer")
    assert 2 <= meta["completion_tokens"] <= 16
    assert [m["role"] for m in state.messages()] == ["system", "user", "assistant"]
    assert state.messages()[-1]["content"] == answer
    assert "A: " + answer in capsys.readouterr().out


@pytest.mark.parametrize("method", ["token_length_normalized", "unconditional_likelihood_normalized"])
def test_few_shot_answers_are_choices(backend, method):
    module = load_example("few_shot")
    states = module.main(["--choices-method", method], backend=backend)
    assert len(states) == len(module.QUESTIONS)
    for (question, choices), state in zip(module.QUESTIONS, states):
        answer = state["answer"]
        assert answer in choices
        assert state.text().endswith(f"Question: {question}\nAnswer: {answer}\n")
        scores = module.compared_scores(state.get_meta_info("answer"), method)
        assert len(scores) == len(choices) and scores[choices.index(answer)] == max(scores)


def test_tree_of_thought_gathers_every_branch(backend):
    state = load_example("tree_of_thought").main(["--branches", "2", "--max-tokens", "8"], backend=backend)
    plans, answers = state["plan"], state["answer"]
    assert len(plans) == 2 and all(isinstance(p, str) and p for p in plans)
    assert len(answers) == 2 and all(len(group) == 2 for group in answers)
    assert all(isinstance(a, str) and a for group in answers for a in group)
    assert all(m["completion_tokens"] <= 8 for m in state.get_meta_info("plan"))  # run's max_new_tokens
    assert state["best"] in {"1", "2", "3", "4"}
    text = state.text()  # the root's own text lists all four candidates before the choice
    for k, candidate in enumerate((a.strip() for group in answers for a in group), 1):
        assert f"{k}. {candidate}" in text
    assert [m["role"] for m in state.messages()] == ["system", "user", "user", "assistant"]


def test_json_extraction_validates(backend):
    module = load_example("json_extraction")
    people = module.main(["--max-tokens", "96"], backend=backend)
    assert len(people) == len(module.TEXTS)  # none cut short, every one parsed
    for person in people:
        assert isinstance(person, module.Person)
        assert module.Person.model_validate_json(person.model_dump_json()) == person


def test_react_agent_calls_tools(backend):
    module = load_example("react_agent")
    states = module.main(["--max-steps", "3"], backend=backend)
    tools_used = set()
    for state in states:
        calls = state.ret_value
        assert 1 <= len(calls) <= 3
        text = state.text()
        for call in calls:
            tools_used.add(call.tool)
            assert call.observation == module.TOOLS[call.tool](call.argument)
            step = f"Action: {call.tool}\nAction Input: {call.argument}\nObservation: {call.observation}\n"
            assert step in text
            if call.tool == "calculator":  # the regex allowed only arithmetic
                assert re.fullmatch(r"[-(0-9][-+*/(). 0-9]*", call.argument)
            else:  # the select allowed only known countries
                assert call.argument in module.CAPITALS
    assert tools_used == {"calculator", "capital"}


def test_react_agent_stops_after_max_steps(backend):
    module = load_example("react_agent")
    [state] = module.main(["--question", "What is 7 * 8?", "--max-steps", "1"], backend=backend)
    assert len(state.ret_value) <= 1
    assert state.text().count("Thought:") == module.PROMPT.count("Thought:") + 1


def test_calculator_tool():
    calculator = load_example("react_agent").calculator
    assert calculator("2 * (3 + 4)") == "14"
    assert calculator("-6 / 4") == "-1.5"
    assert calculator("1 / 0").startswith("error")
    assert calculator("__import__('os')").startswith("error")


def test_multi_turn_chat_messages_alternate(backend):
    module = load_example("multi_turn_chat")
    state = module.main(["--max-tokens", "12", "--turns", "3"], backend=backend)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3
    for i, question in enumerate(module.QUESTIONS[:3]):
        assert messages[1 + 2 * i]["content"] == question
        assert messages[2 + 2 * i]["content"] == state[f"answer_{i}"]
    # Every later turn extends the conversation: its prompt's earlier turns come from the prefix cache.
    for i in (1, 2):
        meta = state.get_meta_info(f"answer_{i}")
        assert meta["cached_tokens"] >= state.get_meta_info(f"answer_{i - 1}")["prompt_tokens"]


def test_batch_keeps_order(backend, capsys):
    module = load_example("batch")
    states = module.main(["--max-tokens", "8", "--num-reviews", "4"], backend=backend)
    assert len(states) == 4
    for review, state in zip(module.REVIEWS, states):
        assert f"Review: {review}" in state.text()
        assert state["sentiment"] in ("positive", "negative")
        assert state.get_meta_info("summary")["completion_tokens"] <= 8
    assert "4/4" in capsys.readouterr().err  # the progress bar ran to the end


def test_quickstart_as_a_script():
    """`make run` runs the file as a script: it loads its own Runtime, prints, shuts down and exits."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--max-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Q: " in proc.stdout and "A: " in proc.stdout and "generated" in proc.stdout
