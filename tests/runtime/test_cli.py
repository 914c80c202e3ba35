"""The `loomlm generate` command prints a real completion; bad arguments give a clear error."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loomlm", *args], capture_output=True, text=True, timeout=300)


def test_generate_chat():
    out = _run("generate", "What is the capital of France?", "--chat", "--max-new-tokens", "16")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_bad_arguments_are_reported(capsys):
    out = _run("generate", "Hi", "--model", "/no/such/file.gguf")
    assert out.returncode == 2 and "/no/such/file.gguf" in out.stderr
    # In process (the same `main`): a bad sampling parameter is reported (before the model loads).
    from loomlm.runtime import cli

    assert cli.main(["generate", "Hi", "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err
