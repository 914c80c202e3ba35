"""loomlm.kernels: Triton kernels, each beside its pure-torch reference (`reference.py`).

Kernels are checked against the references under `TRITON_INTERPRET=1` on CPU (tests/kernels) and run
for real on CUDA. This package imports nothing else from loomlm.
"""
