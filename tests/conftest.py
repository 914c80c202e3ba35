"""Shared fixtures: one engine on the default model per test session (loading takes seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine():
    import loomlm

    eng = loomlm.Engine(max_total_tokens=20000, max_running_requests=32, random_seed=1)
    yield eng
    eng.shutdown()


@pytest.fixture
def idle_engine(engine):
    """The shared engine, checked to be idle with every slot free after the test."""
    yield engine
    engine.idle_integrity()


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer alone (no weights loaded)."""
    from loomlm.runtime.tokenizer import load_tokenizer

    return load_tokenizer(None)
