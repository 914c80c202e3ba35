"""The HTTP backends, `RuntimeEndpoint` (SGLang's native protocol) and `OpenAI` (the `openai` client), run
programs against loomlm's own server on loopback (`tests/runtime/server/served.py`) over the session
engine, and give what the in-process backend gives: the same greedy text, the same select decisions and
scores, constrained outputs, streams, forks; and clear errors (no server, bad key, bad parameter, unknown
argument)."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest

import loomlm as sgl
from loomlm.lang.backends.local import LocalBackend
from loomlm.lang.chat_template import ChatTemplate
from tests.programs import CASES
from tests.programs import chat as qa
from tests.runtime.server.served import Served

API_KEY = "test-key"


@pytest.fixture(scope="module")
def server(engine):
    with Served(engine, api_key=API_KEY, served_model_name="loomlm-test") as srv:
        yield srv


@pytest.fixture(scope="module")
def endpoint(server):
    return sgl.RuntimeEndpoint(server.url, api_key=API_KEY)


@pytest.fixture(scope="module")
def bare_endpoint(server):
    """No local tokenizer: plain chat template, select from the server's token ids alone."""
    return sgl.RuntimeEndpoint(server.url, api_key=API_KEY, tokenizer=None)


@pytest.fixture(scope="module")
def local(engine):
    return LocalBackend(engine)


@pytest.fixture(scope="module")
def chat_client(server):
    pytest.importorskip("openai")
    return sgl.OpenAI("loomlm-test", base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def completion_client(server, engine):
    pytest.importorskip("openai")
    return sgl.OpenAI(
        "loomlm-test",
        base_url=server.url + "/v1",
        api_key=API_KEY,
        is_chat_model=False,
        chat_template=ChatTemplate.from_tokenizer(engine.tokenizer),
        max_retries=0,
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@sgl.function
def choose(s, prompt, choices, method):
    s += prompt
    s += sgl.select("pick", choices=choices, choices_method=method)


# ---- RuntimeEndpoint -----------------------------------------------------------------------------
def test_model_info_names_the_model_and_its_chat_template(endpoint, bare_endpoint, local, engine):
    assert endpoint.model_name() == str(engine.runner.model_path)
    assert endpoint.chat_template == local.chat_template
    assert bare_endpoint.chat_template.name == "plain"


def test_roles_and_gen_give_the_local_backends_text(endpoint, local, engine, server):
    engine.flush_cache()  # both runs then compute the same requests from a cold cache
    remote = qa.run(question="What is the capital of France?", backend=endpoint, temperature=0)
    remote.sync()
    engine.flush_cache()
    here = qa.run(question="What is the capital of France?", backend=local, temperature=0)
    assert remote.text() == here.text() and remote.messages() == here.messages()
    assert [remote[v] for v in ("answer", "short")] == [here[v] for v in ("answer", "short")]
    for var in ("answer", "short"):
        mine, theirs = remote.get_meta_info(var), here.get_meta_info(var)
        assert (mine["prompt_tokens"], mine["completion_tokens"]) == (
            theirs["prompt_tokens"],
            theirs["completion_tokens"],
        )
    sent = server.bodies["/generate"]
    assert sent["text"] == here.text()[: -len(here["short"] + local.chat_template.suffix("assistant"))]
    assert sent["sampling_params"]["max_new_tokens"] == 4 and sent["sampling_params"]["temperature"] == 0


SELECT_CASES = [
    ("Q: What color is the sky on a clear day?\nA: The sky is", [" blue", " green", " purple", " light blue"]),
    # The prompt's trailing space merges into each choice's first token ("token healing").
    ("Question: Which animal says moo?\nAnswer: The ", ["cow", "dog", "cat", "elephant seal"]),
]
METHODS = [sgl.token_length_normalized, sgl.greedy_token_selection, sgl.unconditional_likelihood_normalized]


def _assert_selects_as(backend, expected, prompt, choices, method) -> None:
    state = choose.run(prompt=prompt, choices=choices, method=method, backend=backend)
    assert state["pick"] == expected["pick"]
    meta, want = state.get_meta_info("pick"), expected.get_meta_info("pick")
    assert [len(lp) for lp in meta["input_token_logprobs"]] == [len(lp) for lp in want["input_token_logprobs"]]
    assert meta["normalized_prompt_logprobs"] == pytest.approx(want["normalized_prompt_logprobs"], abs=1e-3)
    assert meta["prompt_tokens"] == want["prompt_tokens"]


@pytest.mark.parametrize("method", METHODS, ids=str)
@pytest.mark.parametrize("prompt,choices", SELECT_CASES, ids=["plain", "healing"])
def test_select_decides_and_scores_as_the_local_backend(
    endpoint, bare_endpoint, local, server, prompt, choices, method
):
    expected = choose.run(prompt=prompt, choices=choices, method=method, backend=local)
    for backend in (endpoint, bare_endpoint):
        before = server.hits["/generate"]
        _assert_selects_as(backend, expected, prompt, choices, method)
        assert server.hits["/generate"] - before == (3 if method.needs_unconditional else 2)


def test_select_does_not_depend_on_where_the_server_starts_input_logprobs(engine, local):
    """A server whose input logprobs begin one position after logprob_start_len (older SGLang)."""
    with Served(engine, shift_input_logprobs=True) as shifted:
        backends = [
            sgl.RuntimeEndpoint(shifted.url, tokenizer=engine.tokenizer),
            sgl.RuntimeEndpoint(shifted.url, tokenizer=None),
        ]
        for prompt, choices in SELECT_CASES:
            for method in METHODS:
                expected = choose.run(prompt=prompt, choices=choices, method=method, backend=local)
                for backend in backends:
                    _assert_selects_as(backend, expected, prompt, choices, method)


@sgl.function
def constrained(s):
    s += "Call me at: " + sgl.gen("phone", regex=r"\(\d{3}\) \d{3}-\d{4}", max_tokens=20)
    s += "\nA city as JSON: " + sgl.gen(
        "city",
        max_tokens=40,
        json_schema={
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 12}},
            "required": ["name"],
        },
    )
    s += "\nYear: " + sgl.gen_int("year", max_tokens=6)


def test_constrained_gens_over_http(endpoint, server):
    state = constrained.run(backend=endpoint, temperature=0.7)
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", state["phone"])
    assert set(json.loads(state["city"])) == {"name"}
    assert re.fullmatch(r"[-+]?\d+", state["year"])
    assert "regex" in server.bodies["/generate"]["sampling_params"]


def test_streaming_yields_increments_with_growing_meta(endpoint):
    state = qa.run(question="Name a fruit.", backend=endpoint, temperature=0, stream=True, return_logprob=True)
    chunks = list(state.text_iter("answer"))
    assert len(chunks) > 1 and "".join(chunks) == state["answer"]
    assert "".join(state.text_iter()) == state.text()

    async def collect() -> list:
        return [meta async for _text, meta in state.text_async_iter("short", return_meta_data=True)]

    metas = asyncio.run(collect())
    counts = [m["completion_tokens"] for m in metas]
    assert counts == sorted(counts) and counts[-1] == state.get_meta_info("short")["completion_tokens"]
    assert len(metas[-1]["output_token_logprobs"]) == counts[-1]


def test_incremental_streaming_server_gives_the_same_meta(engine, endpoint):
    """Against a server with SGLang's `incremental_streaming_output` (per-event text and output logprobs),
    programs still see the whole output and every logprob so far, as from a cumulative server."""
    with Served(engine, incremental_streaming_output=True) as incremental:
        states = [
            qa.run(question="Name a fruit.", backend=backend, temperature=0, stream=True, return_logprob=True)
            for backend in (sgl.RuntimeEndpoint(incremental.url), endpoint)
        ]
        for state in states:
            chunks = list(state.text_iter("answer"))
            assert len(chunks) > 1 and "".join(chunks) == state["answer"]
            meta = state.get_meta_info("answer")
            assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]
        inc, cum = (st.get_meta_info("answer")["output_token_logprobs"] for st in states)
        assert [e[1] for e in inc] == [e[1] for e in cum] and states[0]["answer"] == states[1]["answer"]


@sgl.function
def forked(s):
    s += "Three tips for staying healthy: 1. Eat well. 2. Exercise. 3. Sleep.\n"
    forks = s.fork(3)
    forks += lambda i: f"Tip {i + 1} in one sentence:"
    forks += sgl.gen("tip", max_tokens=6, stop="\n")
    forks.join()


def test_fork_prefills_the_shared_prefix_and_join_gathers(endpoint, engine):
    state = forked.run(backend=endpoint, temperature=0)
    tips = state["tip"]
    assert isinstance(tips, list) and len(tips) == 3 and all(isinstance(t, str) for t in tips)
    prefix_tokens = len(engine.tokenizer(state.text())["input_ids"])
    # The fork prefilled the prefix on the server, so every branch found it in the radix cache.
    assert all(meta["cached_tokens"] >= prefix_tokens - 1 for meta in state.get_meta_info("tip"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
def test_program_library_over_runtime_endpoint(case, endpoint, engine):
    case(endpoint)
    engine.idle_integrity()


# ---- errors ---------------------------------------------------------------------------------------
def test_no_server_is_a_connection_error_naming_the_url():
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConnectionError, match=re.escape(url)):
        sgl.RuntimeEndpoint(url)
    pytest.importorskip("openai")
    client = sgl.OpenAI("m", base_url=url + "/v1", max_retries=0)
    state = qa.run(question="hi", backend=client)
    with pytest.raises(ConnectionError, match=re.escape(url)):
        state["answer"]


def test_server_errors_carry_the_servers_message(server, endpoint, chat_client):
    with pytest.raises(ValueError, match="HTTP 401.*invalid or missing API key"):
        sgl.RuntimeEndpoint(server.url, api_key="wrong")
    for backend in (endpoint, chat_client):
        for stream in (False, True):
            state = qa.run(question="hi", backend=backend, temperature=-1.0, stream=stream)
            with pytest.raises(ValueError, match="HTTP 400.*temperature"):
                state["answer"]


def test_unknown_arguments_are_type_errors(server):
    with pytest.raises(TypeError, match="tokenzier"):
        sgl.RuntimeEndpoint(server.url, tokenzier=None)
    pytest.importorskip("openai")
    with pytest.raises(TypeError, match="did you mean 'max_retries'"):
        sgl.OpenAI("m", base_url=server.url + "/v1", max_retrys=0)
    with pytest.raises(ValueError, match="http"):
        sgl.RuntimeEndpoint("localhost:30000")


# ---- OpenAI -----------------------------------------------------------------------------------------
def test_openai_chat_sends_the_conversation(chat_client, server, engine):
    state = qa.run(question="What is the capital of France?", backend=chat_client, temperature=0)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == state["answer"] and messages[4]["content"] == state["short"]
    sent = server.bodies["/v1/chat/completions"]
    assert sent["messages"] == messages[:4] and sent["max_tokens"] == 4
    prompt = engine.apply_chat_template(messages[:4])
    assert state.get_meta_info("short")["prompt_tokens"] == len(engine.tokenizer(prompt)["input_ids"])
    assert state.text() == chat_client.chat_template.render(messages)


def test_openai_chat_streams_and_returns_logprobs(chat_client):
    state = qa.run(question="Name a fruit.", backend=chat_client, temperature=0, stream=True)
    chunks = list(state.text_iter("answer"))
    assert len([c for c in chunks if c]) > 1 and "".join(chunks) == state["answer"]
    assert state.get_meta_info("answer")["finish_reason"]["type"] in ("stop", "length")

    state = qa.run(
        question="Name a fruit.", backend=chat_client, temperature=0, return_logprob=True, top_logprobs_num=2
    )
    meta = state.get_meta_info("answer")
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    assert "".join(entry[2] for entry in meta["output_token_logprobs"]) == state["answer"]
    assert all(len(row) == 2 for row in meta["output_top_logprobs"])


@sgl.function
def chat_json(s):
    s += sgl.user("Describe Paris as JSON.")
    s += sgl.assistant(
        sgl.gen(
            "json",
            max_tokens=40,
            json_schema={
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}},
                "required": ["city"],
            },
        )
    )


@sgl.function
def yes_no(s):
    s += sgl.user("Is the sky blue on a clear day? Answer yes or no.")
    s += sgl.assistant(sgl.select("answer", choices=["Yes", "No"]))


def test_openai_chat_json_schema_and_select(chat_client, server):
    state = chat_json.run(backend=chat_client, temperature=0)
    assert set(json.loads(state["json"])) == {"city"}
    assert server.bodies["/v1/chat/completions"]["response_format"]["type"] == "json_schema"

    state = yes_no.run(backend=chat_client)
    meta = state.get_meta_info("answer")
    assert state["answer"] in ("Yes", "No") and meta["selection"].startswith("generate_and_match")
    index = ["Yes", "No"].index(state["answer"])
    assert meta["matched_chars"][index] == max(meta["matched_chars"])


@sgl.function
def gen_in_the_wrong_place(s, where):
    s += sgl.user("Hello.")
    if where == "outside":
        s += sgl.gen("x", max_tokens=2)
    else:
        s += sgl.assistant("Sure: " + sgl.gen("x", max_tokens=2))


def test_openai_chat_gen_must_open_the_assistant_message(chat_client):
    with pytest.raises(ValueError, match="must begin an assistant message"):
        gen_in_the_wrong_place.run(where="outside", backend=chat_client)["x"]
    with pytest.raises(ValueError, match="cannot continue a message"):
        gen_in_the_wrong_place.run(where="inside", backend=chat_client)["x"]


def test_openai_proper_refuses_what_it_has_no_parameter_for():
    pytest.importorskip("openai")
    client = sgl.OpenAI("gpt-3.5-turbo-instruct", api_key="sk-not-used", max_retries=0)
    assert not client.is_chat_model and client.is_openai
    state = constrained.run(backend=client)  # fails before any request: nothing reaches the network
    with pytest.raises(ValueError, match="OpenAI's API has no regex"):
        state["phone"]


@pytest.mark.parametrize("prompt,choices", SELECT_CASES, ids=["plain", "healing"])
def test_openai_completion_select_scores_echoed_logprobs_as_local(completion_client, local, prompt, choices):
    method = sgl.token_length_normalized
    expected = choose.run(prompt=prompt, choices=choices, method=method, backend=local)
    state = choose.run(prompt=prompt, choices=choices, method=method, backend=completion_client)
    meta, want = state.get_meta_info("pick"), expected.get_meta_info("pick")
    assert state["pick"] == expected["pick"] and meta["selection"] == "echo_logprobs"
    assert meta["normalized_prompt_logprobs"] == pytest.approx(want["normalized_prompt_logprobs"], abs=1e-3)


def test_openai_completion_constrained_and_streamed(completion_client, server):
    state = constrained.run(backend=completion_client, temperature=0.7)
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", state["phone"])
    assert set(json.loads(state["city"])) == {"name"}
    assert re.fullmatch(r"[-+]?\d+", state["year"])
    assert "regex" in server.bodies["/v1/completions"]  # extra_body reaches the body's top level

    state = constrained.run(backend=completion_client, temperature=0, stream=True)
    chunks = list(state.text_iter("phone"))
    assert len(chunks) > 1 and "".join(chunks) == state["phone"]
    assert "".join(state.text_iter()) == state.text()
