"""Shared fixtures, made once per test session because loading takes seconds: an engine on the default
model (while it lives, every other engine on that model shares its weights and tokenizer), the model's
tokenizer, and transformers' own load of the same GGUF file (the reference the engine is checked
against)."""

from __future__ import annotations

import os

import pytest

# dtype="auto" on CPU measures float32 against bfloat16 (runtime/models/cpu_dtype.py); the suite's numbers
# (references, identical outputs across engines and servers) must not depend on the machine: float32.
# Servers the tests start inherit it. tests/runtime/test_cpu_dtype.py tests the choice itself.
os.environ.setdefault("LOOMLM_CPU_DTYPE", "float32")

# First, so that a test module importing transformers at its top finds Hugging Face's `kernels` package and
# not the repository's kernels/ folder (loomlm/unshadow.py).
import loomlm

# No test races the wall clock: engines in tests get a grammar time budget no compile reaches, so only the
# deterministic limits (states, work) can fail one. The time budget itself is tested with injected clocks.
NO_GRAMMAR_DEADLINE = 1e9


@pytest.fixture(scope="session")
def engine():
    eng = loomlm.Engine(
        max_total_tokens=20000, max_running_requests=32, random_seed=1, grammar_timeout_s=NO_GRAMMAR_DEADLINE
    )
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


@pytest.fixture(scope="session")
def hf_reference_model():
    """transformers' LlamaForCausalLM read by transformers from the default GGUF file (float32, eval)."""
    import os

    import torch
    from transformers import AutoModelForCausalLM

    from loomlm.runtime.models.loader import default_model_path

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    return model.eval()
