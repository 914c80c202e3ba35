"""The attention backend interface the model calls once per layer."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from loomlm.runtime.forward_context import ForwardContext


class AttentionBackend(abc.ABC):
    """Stores new K/V into their slots and attends over each request's slots.

    `prepare(ctx)` runs once per forward (index tensors shared by every layer); `forward` runs per layer.
    """

    @abc.abstractmethod
    def prepare(self, ctx: ForwardContext) -> None:
        """Compute per-forward metadata and store it in `ctx.attn_metadata`."""

    @abc.abstractmethod
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, ctx: ForwardContext
    ) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, KVH, D] (new tokens). Returns [T, H, D]."""


def create_attention_backend(name: str, scale: float) -> AttentionBackend:
    if name == "torch":
        from loomlm.runtime.attention.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend(scale)
    if name == "cpu":
        from loomlm.runtime.attention.cpu_backend import CpuAttentionBackend

        return CpuAttentionBackend(scale)
    if name == "triton":
        from loomlm.runtime.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend(scale)
    raise ValueError(f"unknown attention_backend {name!r}; available: 'torch', 'cpu', 'triton'")
