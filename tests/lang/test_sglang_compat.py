"""Programs written for `sglang`, in its documentation's style, run unchanged with `import loomlm as sgl`."""

from __future__ import annotations

import pytest


@pytest.fixture
def default_backend(engine):
    import loomlm

    previous = loomlm.get_default_backend()
    loomlm.set_default_backend(engine)  # an in-process Engine is accepted as a backend
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
        s += "Here are two tips for staying healthy: 1. Balanced Diet. 2. Regular Exercise.\n\n"
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Now, expand tip {i + 1} into a paragraph:\n"
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
    states = tool_use.run_batch(
        [{"question": "What is 3 + 5?"}, {"question": "Who wrote Hamlet?"}], progress_bar=False, temperature=0
    )
    for st in states:
        assert st["tool"] in ("calculator", "search engine")
        assert ("expression" in st) != ("word" in st)
    engine.idle_integrity()


# SGLang's public frontend names (python/sglang/__init__.py's __all__).
SGLANG_NAMES = [
    "Engine",
    "Runtime",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_server_info",
    "image",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "user",
    "user_begin",
    "user_end",
    "video",
    "RuntimeEndpoint",
    "greedy_token_selection",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "Anthropic",
    "LiteLLM",
    "OpenAI",
    "VertexAI",
    "global_config",
    "__version__",
]
# sglang.lang.api.gen's arguments, in order (loomlm adds repetition_penalty and seed after them).
SGLANG_GEN_ARGS = [
    "name",
    "max_tokens",
    "min_tokens",
    "n",
    "stop",
    "stop_token_ids",
    "stop_regex",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "ignore_eos",
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
    "dtype",
    "choices",
    "choices_method",
    "regex",
    "json_schema",
]


def test_every_sglang_name_exists_and_gen_takes_sglangs_arguments():
    import inspect

    import loomlm as sgl

    missing = [name for name in SGLANG_NAMES if not hasattr(sgl, name)]
    assert not missing
    assert set(SGLANG_NAMES) - {"__version__"} <= set(sgl.__all__)
    assert list(inspect.signature(sgl.gen).parameters)[: len(SGLANG_GEN_ARGS)] == SGLANG_GEN_ARGS
    expr = sgl.gen("x", 8, None, 1, "\n")  # positionally, as SGLang orders them
    assert expr.params.max_tokens == 8 and expr.params.stop == "\n"
    with pytest.raises(TypeError, match="gen\\(\\) got an unexpected keyword argument 'max_token'"):
        sgl.gen("x", max_token=3)
    for unsupported in (
        lambda: sgl.image("cat.png"),
        lambda: sgl.video("cat.mp4", 4),
        lambda: sgl.Anthropic("m"),
        lambda: sgl.gen("x", n=2),
        lambda: sgl.gen("x", stop_regex="a+"),
    ):
        with pytest.raises(NotImplementedError):
            unsupported()


def test_fork_item_assignment_and_list_broadcast(default_backend, engine):
    import loomlm as sgl

    @sgl.function
    def expand(s):
        s += "Two colours: red and blue.\n"
        forks = s.fork(2)
        for i in range(len(forks)):
            forks[i] += f"Colour {i + 1} in one word:"  # SGLang's `forks[i] += ...`
            forks[i] += sgl.gen("colour", max_tokens=3, stop="\n")
        forks += [" (first)", " (second)"]  # one expr per branch
        forks.join()
        assert forks.src_state is s
        with pytest.raises(TypeError):  # only a branch itself goes back
            forks[0] = forks[1]

    state = expand.run(temperature=0)
    assert len(state["colour"]) == 2 and all(isinstance(c, str) for c in state["colour"])
    engine.idle_integrity()


def test_program_state_methods(default_backend, engine):
    import loomlm as sgl

    @sgl.function
    def notes(s):
        node = s.user("Say hi.")
        assert node is not None  # SGLang returns the message's node
        s += sgl.assistant(sgl.gen("reply", max_tokens=4))
        s.set_var("extra", 1)
        with s.copy() as c:  # a branch joined back on exit
            c += "Again:" + sgl.gen("again", max_tokens=3)

    state = notes.run(temperature=0)
    state.sync()
    assert "reply" in state and "missing" not in state and state.get_var("extra") == 1
    assert state.error() is None and [m["role"] for m in state.messages()] == ["user", "assistant"]
    assert state["reply"] in state.text()
    assert isinstance(state["again"], list) and len(state["again"]) == 1
    engine.idle_integrity()


def test_global_config(default_backend, engine, capsys, monkeypatch):
    import loomlm as sgl
    import loomlm.lang
    from loomlm.global_config import global_config

    assert global_config is sgl.global_config is loomlm.lang.global_config
    assert global_config.default_backend is sgl.get_default_backend()
    global_config.default_backend = engine  # as `sgl.set_default_backend(engine)`
    assert sgl.get_default_backend().engine is engine

    @sgl.function
    def hello(s, name):
        s += "Hello, "
        s += name + "!"

    monkeypatch.setattr(global_config, "verbosity", 2)
    hello.run(name="Ada")
    assert "Hello, Ada!" in capsys.readouterr().out

    monkeypatch.setattr(global_config, "verbosity", 0)
    backend = sgl.get_default_backend()
    prefilled: list[str] = []
    monkeypatch.setattr(backend, "prefill", prefilled.append)
    monkeypatch.setattr(global_config, "enable_precache_with_tracing", False)
    hello.run_batch([{"name": "A"}, {"name": "B"}])
    assert prefilled == []
    monkeypatch.setattr(global_config, "enable_precache_with_tracing", True)
    hello.run_batch([{"name": "A"}, {"name": "B"}])
    assert prefilled == ["Hello, "]
    global_config.enable_parallel_encoding = False  # accepted, unused
    global_config.enable_parallel_encoding = True


def test_flush_cache_server_info_and_generator_batches(default_backend, engine):
    import loomlm as sgl

    assert sgl.get_server_info()["model_path"] == str(engine.runner.model_path)
    assert sgl.flush_cache() is True

    @sgl.function
    def echo(s, word):
        s += word + sgl.gen("more", max_tokens=2)

    states = echo.run_batch([{"word": w} for w in ("a", "b", "c")], generator_style=True, temperature=0)
    assert not isinstance(states, list)
    assert [st.text().startswith(w) for st, w in zip(states, "abc")] == [True] * 3
    engine.idle_integrity()
