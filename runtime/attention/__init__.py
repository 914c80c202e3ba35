"""Attention backends over the token-slot KV pool: `torch` (the CPU path) and `triton` (the CUDA path)."""

from loomlm.runtime.attention.base import AttentionBackend, create_attention_backend

__all__ = ["AttentionBackend", "create_attention_backend"]
