"""The program library (`tests/programs.py`) on the in-process backend over the session engine."""

from __future__ import annotations

import pytest

from loomlm.lang.backends.local import LocalBackend
from tests.programs import CASES


@pytest.fixture(scope="module")
def local(engine):
    return LocalBackend(engine)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
def test_program_library(case, local, engine):
    case(local)
    engine.idle_integrity()
