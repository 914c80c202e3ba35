"""Errors in programs: a failed gen's error is raised where its variable is read, with its message;
argument mistakes are TypeErrors; nothing is left queued or locked in the engine."""

from __future__ import annotations

import pytest

import loomlm as sgl
from loomlm.lang.backends.local import LocalBackend


@pytest.fixture(scope="module")
def local(engine):
    return LocalBackend(engine)


@sgl.function
def bad_schema(s):
    s += "Data: "
    s += sgl.gen("before", max_tokens=2)
    s += sgl.gen("data", json_schema={"type": "object", "properties": {"a": {"type": "frobnicate"}}})
    s += sgl.gen("after", max_tokens=2)


def test_failed_gen_raises_its_error_where_read(local, engine):
    state = bad_schema.run(backend=local, temperature=0)
    assert isinstance(state["before"], str)
    with pytest.raises(ValueError, match="frobnicate"):
        state["data"]
    with pytest.raises(ValueError, match="frobnicate"):  # later gens never ran: same first error
        state["after"]
    assert isinstance(state.error(), ValueError)
    engine.idle_integrity()


@sgl.function
def bad_temperature(s):
    s += "Hi"
    s += sgl.gen("x", max_tokens=2, temperature=-1)


def test_bad_sampling_parameter_names_the_field(local):
    state = bad_temperature.run(backend=local)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        state["x"]
    with pytest.raises(ValueError, match="temperature"):
        state.get_meta_info("x")


def test_prompt_longer_than_context(local, engine):
    @sgl.function
    def huge(s):
        s += "word " * (engine.context_length + 10)
        s += sgl.gen("x", max_tokens=2)

    with pytest.raises(ValueError, match="context length"):
        huge.run(backend=local)["x"]
    engine.idle_integrity()


def test_unknown_runtime_argument_is_a_type_error():
    with pytest.raises(TypeError, match="modle_path.*did you mean 'model_path'"):
        sgl.Runtime(modle_path="x")


def test_program_argument_errors_are_type_errors(local):
    @sgl.function
    def prog(s, topic):
        s += topic

    with pytest.raises(TypeError, match="unexpected argument 'topik' \\(did you mean 'topic'\\?\\)"):
        prog.run(topik="x", backend=local)
    with pytest.raises(TypeError, match="missing a required argument: 'topic'"):
        prog.run(backend=local)
    with pytest.raises(TypeError, match="unexpected argument 'nope'"):
        prog.bind(nope=1)
    with pytest.raises(TypeError, match="first argument"):
        sgl.function(lambda: None)


def test_gen_argument_errors():
    with pytest.raises(ValueError, match="dtype"):
        sgl.gen("x", dtype=list)
    with pytest.raises(ValueError, match="cannot be combined"):
        sgl.gen("x", regex="a", dtype=int)
    with pytest.raises(TypeError, match="cannot add a dict"):
        sgl.gen("x") + {"a": 1}


def test_unknown_variable_and_role_misuse(local):
    @sgl.function
    def prog(s):
        s += "Hello"
        s += sgl.user_begin()
        s += sgl.assistant_end()

    state = prog.run(backend=local)
    with pytest.raises(KeyError, match="no variable 'missing'"):
        state["missing"]
    assert "ends but the open role is 'user'" in str(state.error())


def test_no_default_backend():
    previous = sgl.get_default_backend()
    sgl.set_default_backend(None)
    try:
        with pytest.raises(RuntimeError, match="set_default_backend"):
            bad_schema.run()
    finally:
        sgl.set_default_backend(previous)


def test_exception_in_program_body_ends_the_run(local):
    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("x", max_tokens=2)
        raise RuntimeError("tool failed")

    with pytest.raises(RuntimeError, match="tool failed"):
        prog.run(backend=local)


def test_program_threads_end_with_their_programs(local):
    import threading
    import time

    def program_threads() -> int:
        return sum(t.name == "loomlm-program" for t in threading.enumerate())

    states = bad_temperature.run_batch([{}] * 5, backend=local)
    assert all(isinstance(s.error(), ValueError) for s in states)
    deadline = time.monotonic() + 30
    while program_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert program_threads() == 0


def test_program_argument_named_like_a_sampling_parameter(local):
    @sgl.function
    def prog(s, max_tokens, seed=3):
        s += f"{max_tokens} {seed}"

    state = prog.run(max_tokens=5, seed=7, temperature=0, backend=local)
    assert state.text() == "5 7"
