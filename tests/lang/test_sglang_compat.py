"""Programs written for `sglang`, in its documentation's style, run unchanged with `import loomlm as sgl`."""

from __future__ import annotations

import pytest


@pytest.fixture
def default_backend(engine):
    import loomlm

    previous = loomlm.get_default_backend()
    loomlm.set_default_backend(engine)      # an in-process Engine is accepted as a backend
    yield
    loomlm.set_default_backend(previous)


def test_readme_multi_turn_program(default_backend, engine):
    from loomlm import assistant, function, gen, system, user

    @function
    def multi_turn_question(s, question_1, question_2):
        s += system("You are a helpful assistant.")
        s += user(question_1)
        s += assistant(gen("answer_1", max_tokens=16))
        s += user(question_2)
        s += assistant(gen("answer_2", max_tokens=16))

    state = multi_turn_question.run(
        question_1="What is the capital of the United States?",
        question_2="List two local attractions.",
        temperature=0,
    )
    roles = [m["role"] for m in state.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert state["answer_1"] == state.messages()[2]["content"]

    streamed = multi_turn_question.run(question_1="Hi", question_2="Bye", stream=True, max_new_tokens=8)
    text = "".join(out for out in streamed.text_iter())
    assert text == streamed.text()
    engine.idle_integrity()


def test_docs_tip_suggestion_with_fork_and_choices(default_backend, engine):
    import loomlm as sgl

    @sgl.function
    def tip_suggestion(s):
        s += (
            "Here are two tips for staying healthy: "
            "1. Balanced Diet. 2. Regular Exercise.\n\n"
        )
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Now, expand tip {i+1} into a paragraph:\n"
            f += sgl.gen("detailed_tip", max_tokens=12, stop="\n\n")
        s += "Tip 1:" + forks[0]["detailed_tip"] + "\n"
        s += "Tip 2:" + forks[1]["detailed_tip"] + "\n"
        s += "In summary" + sgl.gen("summary", max_tokens=8)

    @sgl.function
    def tool_use(s, question):
        s += "To answer this question: " + question + ". "
        s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "
        if s["tool"] == "calculator":
            s += "The math expression is" + sgl.gen("expression", max_tokens=8)
        elif s["tool"] == "search engine":
            s += "The key word to search is" + sgl.gen("word", max_tokens=8)

    state = tip_suggestion.run(temperature=0)
    assert state.text().count("Tip ") == 2 and isinstance(state["summary"], str)
    states = tool_use.run_batch([{"question": "What is 3 + 5?"}, {"question": "Who wrote Hamlet?"}],
                                progress_bar=False, temperature=0)
    for st in states:
        assert st["tool"] in ("calculator", "search engine")
        assert ("expression" in st) != ("word" in st)
    engine.idle_integrity()
