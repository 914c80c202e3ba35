"""Kernel tests run the Triton kernels in the interpreter on CPU (set before any kernel is decorated)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
