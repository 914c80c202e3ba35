"""loomlm.kernels: Triton kernels, each beside its pure-torch reference (`reference.py`).

`decode_attention.py` (split-KV decode over the slot table), `extend_attention.py` (prefill over a cached
prefix), `rope_kv.py` (RoPE in place, the KV-pool store), `fused_ops.py` (RMSNorm with the residual add,
SiLU-and-mul, the grammar logit bitmask). Kernels are checked against the references under
`TRITON_INTERPRET=1` on CPU (tests/kernels) and run for real on CUDA; their benchmark is
`loomlm/bench/kernels.py` (`python -m loomlm.bench kernels`), their sm_90 compile check
`tools/kernel_compile_check.py`. This package imports nothing else from loomlm.
"""
