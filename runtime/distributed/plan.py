"""TensorParallelPlan: which heads, MLP columns and vocabulary rows one rank of a tensor-parallel group
holds.

Attention is split along KV-head groups so that every rank keeps the model's query-per-KV-head ratio
(the attention backends need a uniform group): with at least as many KV heads as ranks, each rank takes
a contiguous run of whole KV heads with their query heads, as evenly as possible (SmolLM2-135M's 3 KV
heads over 2 ranks: 2 + 1); with fewer, each KV head is replicated on `size / num_kv_heads` ranks and its
query heads are shared out between them. The MLP's intermediate columns and the vocabulary are split
in contiguous, near-even ranges. Uneven splits are allowed: the row-parallel sums and the vocabulary
gather do not need equal shards.
"""

from __future__ import annotations

from dataclasses import dataclass

from loomlm.runtime.models.config import ModelConfig


def even_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """The `index`-th of `parts` contiguous ranges covering [0, total), sizes differing by at most one."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


@dataclass(frozen=True)
class TensorParallelPlan:
    rank: int
    size: int
    q_heads: tuple[int, int]  # [start, end) of the model's query heads
    kv_heads: tuple[int, int]  # [start, end) of the model's KV heads
    intermediate: tuple[int, int]  # [start, end) of the MLP's intermediate columns
    vocab: tuple[int, int]  # [start, end) of the vocabulary (embedding rows, LM-head rows)
    max_kv_heads: int  # the most KV heads any rank holds (sizes every rank's KV pool alike)

    @property
    def num_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @classmethod
    def for_rank(cls, config: ModelConfig, rank: int, size: int) -> TensorParallelPlan:
        check_splittable(config, size)
        H, KVH = config.num_heads, config.num_kv_heads
        group = H // KVH
        if KVH >= size:
            kv = even_range(KVH, size, rank)
            q = (kv[0] * group, kv[1] * group)
            max_kv = -(-KVH // size)
        else:
            replicas = size // KVH
            head = rank // replicas
            lo, hi = even_range(group, replicas, rank % replicas)
            kv = (head, head + 1)
            q = (head * group + lo, head * group + hi)
            max_kv = 1
        return cls(
            rank=rank,
            size=size,
            q_heads=q,
            kv_heads=kv,
            intermediate=even_range(config.intermediate_size, size, rank),
            vocab=even_range(config.vocab_size, size, rank),
            max_kv_heads=max_kv,
        )


def check_splittable(config: ModelConfig, size: int) -> None:
    """Raise ValueError naming the reason when the model cannot be split over `size` ranks."""
    if size < 1:
        raise ValueError(f"tp_size must be >= 1, got {size}")
    H, KVH = config.num_heads, config.num_kv_heads
    if size <= KVH:
        return
    if size % KVH:
        raise ValueError(
            f"tp_size {size} does not fit the model's {KVH} KV heads: with more ranks than KV heads, "
            f"tp_size must be a multiple of {KVH}"
        )
    if H // KVH < size // KVH:
        raise ValueError(f"tp_size {size} exceeds the model's {H} attention heads")
