"""Kernel tests on the device named by LOOMLM_KERNEL_TEST_DEVICE: `cpu` (the default) runs the Triton
kernels in the interpreter (TRITON_INTERPRET=1, set here before any kernel is decorated); `cuda` compiles
them for the GPU. Inputs are built on CPU from seeded generators (the same values on both devices), the
kernel runs on the `device` fixture, and the torch reference runs on CPU as the oracle.

On a GPU: LOOMLM_KERNEL_TEST_DEVICE=cuda .venv/bin/python -m pytest -q tests/kernels
"""

import os

import pytest
import torch

_ENV = "LOOMLM_KERNEL_TEST_DEVICE"
_DEVICE = os.environ.get(_ENV, "").strip().lower() or "cpu"
_INTERPRET_SET = os.environ.get("TRITON_INTERPRET", "").strip().lower() not in ("", "0", "false", "off", "no", "n")

if _DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    """Refuse at once (exit status 4) a device the run cannot honour, before any test is collected."""
    if _DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"{_ENV}={os.environ[_ENV]!r}: expected 'cpu' (the default) or 'cuda'")
    if _DEVICE == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(
                f"{_ENV}=cuda, but torch.cuda.is_available() is False (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}): the kernel tests need a CUDA GPU here; unset {_ENV} "
                "to run them in the Triton interpreter on CPU"
            )
        if _INTERPRET_SET:
            raise pytest.UsageError(
                f"{_ENV}=cuda compiles the kernels for the GPU, but TRITON_INTERPRET="
                f"{os.environ['TRITON_INTERPRET']!r} would run them in the interpreter: unset it"
            )


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the kernels under test run (their inputs and outputs live there)."""
    if _DEVICE == "cuda":
        from loomlm.kernels import attention_block

        if attention_block.interpreted():  # TRITON_INTERPRET set in a way the check above missed
            pytest.exit(f"{_ENV}=cuda but the kernels were built for the Triton interpreter", returncode=4)
    return torch.device(_DEVICE)
