"""KV memory: a pool of token slots (page size 1) and the request -> slot table.

`KVPool` owns one K and one V buffer per layer, each `[num_slots, num_kv_heads, head_dim]`, and a free
list of slot indices. `ReqToTokenPool` maps a request's row (one per running request) and its token
positions to slots: `req_to_token[row, pos] = slot`. Both keep exact accounting: every slot and every
row is either free or owned, and `check_integrity()` verifies it.
"""

from __future__ import annotations

import torch


class OutOfSlotsError(RuntimeError):
    """Raised when an allocation asks for more slots or rows than are free."""


class KVPool:
    """Token-slot KV cache. Slot `num_slots` (one past the end) is a scratch slot for padding writes."""

    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        if num_slots <= 0:
            raise ValueError(f"KV pool needs at least one slot, got num_slots={num_slots}")
        self.num_slots = num_slots
        self.num_layers = num_layers
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_slots + 1, num_kv_heads, head_dim)
        # torch.empty: pages are committed lazily on CPU, so a large pool costs only what is touched.
        self.k_buffers = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.v_buffers = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        for buf in self.k_buffers + self.v_buffers:
            buf[num_slots].zero_()  # padding reads land on the scratch slot: it must be finite (0 * NaN = NaN)
        self._free = torch.arange(num_slots - 1, -1, -1, dtype=torch.int64)  # a stack: top = lowest slot
        self._num_free = num_slots

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.finfo(dtype).bits // 8

    @property
    def scratch_slot(self) -> int:
        return self.num_slots

    def available(self) -> int:
        return self._num_free

    def used(self) -> int:
        return self.num_slots - self._num_free

    def alloc(self, n: int) -> torch.Tensor:
        """Return `n` free slot indices (int64, CPU), taken from the top of the free stack."""
        if n > self._num_free:
            raise OutOfSlotsError(f"asked for {n} KV slots, {self._num_free} free")
        start = self._num_free - n
        out = self._free[start : self._num_free].flip(0).clone()
        self._num_free = start
        return out

    def free(self, slots: torch.Tensor) -> None:
        """Push slots back on the stack: LIFO reuse keeps the touched part of the pool small."""
        n = int(slots.numel())
        if n == 0:
            return
        if self._num_free + n > self.num_slots:
            raise RuntimeError("freeing more KV slots than were allocated (double free)")
        self._free[self._num_free : self._num_free + n] = slots.to(torch.int64).cpu().flip(0)
        self._num_free += n

    def check_integrity(self) -> None:
        free = self._free[: self._num_free]
        if free.numel() and (free.min() < 0 or free.max() >= self.num_slots):
            raise AssertionError("free list holds out-of-range slots")
        if torch.unique(free).numel() != free.numel():
            raise AssertionError("free list holds a slot twice")


class ReqToTokenPool:
    """Rows of `req_to_token` [max_requests, max_context] int32, one row per running request."""

    def __init__(self, max_requests: int, max_context: int, device: torch.device | str):
        self.max_requests = max_requests
        self.max_context = max_context
        self.req_to_token = torch.zeros((max_requests, max_context), dtype=torch.int32, device=device)
        self._free_rows = list(range(max_requests - 1, -1, -1))

    def available(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int:
        if not self._free_rows:
            raise OutOfSlotsError("no free request rows")
        return self._free_rows.pop()

    def free(self, row: int) -> None:
        if row in self._free_rows or not 0 <= row < self.max_requests:
            raise RuntimeError(f"freeing request row {row} that is not allocated")
        self._free_rows.append(row)

    def check_integrity(self) -> None:
        if len(set(self._free_rows)) != len(self._free_rows):
            raise AssertionError("request row free list holds a row twice")
