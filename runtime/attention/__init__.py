"""Attention backends over the token-slot KV pool (`torch` reference here; `triton` on CUDA later)."""

from loomlm.runtime.attention.base import AttentionBackend, create_attention_backend

__all__ = ["AttentionBackend", "create_attention_backend"]
