"""`bench offline --peer vllm`: the peer's failures are named, and a peer model other than the default
needs its Hugging Face folder. (The measurement itself needs vLLM's CPU build in a virtual environment
of its own; its figures are in docs/benchmarks.md.)"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from loomlm.bench import vllm_peer


def test_a_model_other_than_the_default_needs_its_folder():
    with pytest.raises(ValueError, match="--peer-model-dir"):
        vllm_peer.ensure_model_dir(None, "/models/other.gguf")
    assert vllm_peer.ensure_model_dir("/some/hf/folder", "/models/other.gguf") == "/some/hf/folder"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed in this environment")
def test_a_python_without_vllm_fails_with_the_peers_own_error(capsys):
    with pytest.raises(RuntimeError, match="the vLLM peer failed"):
        vllm_peer.run_vllm(sys.executable, "/nonexistent", [[1, 2, 3]], 4, "bfloat16", 1)
    assert "No module named 'vllm'" in capsys.readouterr().err
