"""Attention backends over the token-slot KV pool: `cpu` (C++ kernels, the CPU default), `torch` (the
CPU fallback, aten ops) and `triton` (the CUDA path)."""

from loomlm.runtime.attention.base import AttentionBackend, create_attention_backend

__all__ = ["AttentionBackend", "create_attention_backend"]
