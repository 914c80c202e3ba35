"""Collectives through shared memory, for tensor-parallel ranks on one CPU host.

gloo sums a few KB over loopback TCP in about 1.4 ms and broadcasts in about 0.5 ms (2-core AMD EPYC,
two ranks); a 30-layer model needs 61 sums, two broadcasts and a gather per step. Here one exchange
does each: every rank copies its bytes into its own slot of a shared segment, raises its flag and waits
until every rank's flag is up; then it reads what it needs. A sum adds the slots in rank order on every
rank, so every rank gets the same bits; a broadcast reads rank 0's slot (its first 8 bytes: the
length); a gather reads every slot. Two sets of slots alternate (by the sequence number's parity):
a rank can only reach step s+1 after every rank arrived at step s, so nobody still reads the set that
step s+1 writes.

The flags are plain int64 stores: on x86 stores become visible in program order and loads are not
reordered with older loads (TSO), which is what the data-then-flag protocol needs; elsewhere (or for a
tensor larger than a slot) the group uses gloo instead. A wait checks, every few thousand polls, that
its peers are alive (`peers_alive`) and that `timeout_s` has not passed; either failure raises
RuntimeError, as a failed gloo collective does. After tens of milliseconds a wait sleeps 1 ms per poll,
so a rank idling between steps leaves its core; its wait for the next step has no time limit.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

SLOT_BYTES = 8 * 2**20  # per rank and parity: a 2,048-token chunk of a 576-wide float32 hidden state is 4.7 MB
_HEADER = 64  # the flags, one int64 per rank (up to 8 ranks), before the slots
_HOT_POLLS = 2000  # polls before yielding the core on each further poll
_SLEEP_POLLS = 50_000  # polls (tens of ms) before sleeping 1 ms per poll: an idle rank leaves its core
_CHECK_EVERY = 4096  # polls between liveness / timeout checks


def shm_supported(size: int) -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and 2 <= size <= _HEADER // 8


def segment_bytes(size: int) -> int:
    return _HEADER + 2 * size * SLOT_BYTES


class SharedMemoryCollectives:
    def __init__(self, path: str, rank: int, size: int, timeout_s: float, peers_alive: Callable[[], bool]):
        """Map the segment file at `path` (rank 0 created it with `segment_bytes(size)` zero bytes)."""
        self.rank, self.size = rank, size
        self.timeout_s = timeout_s
        self.peers_alive = peers_alive
        raw = torch.from_file(path, shared=True, size=segment_bytes(size), dtype=torch.uint8)
        self.flags = raw[: 8 * size].view(torch.int64)  # [size]
        self.slots = raw[_HEADER:].view(2, size, SLOT_BYTES)  # [parity, rank, bytes]
        self.seq = 0

    def fits(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cpu" and tensor.numel() * tensor.element_size() <= SLOT_BYTES

    def _exchange(self, data: torch.Tensor | None, bounded: bool = True) -> torch.Tensor:
        """Write `data` (bytes, or nothing) into this rank's slot, wait for every rank: [size, SLOT_BYTES].
        `bounded`: the wait may last at most `timeout_s` (not so for a rank waiting for its next step)."""
        self.seq += 1
        slots = self.slots[self.seq % 2]
        if data is not None:
            slots[self.rank, : data.numel()].copy_(data)
        self.flags[self.rank] = self.seq  # after the data: x86 keeps the two stores in this order
        self._wait(self.seq, bounded)
        return slots

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (every rank calls it with the same shape and dtype)."""
        flat = tensor.reshape(-1)
        nbytes = flat.numel() * flat.element_size()
        slots = self._exchange(flat.view(torch.uint8))[:, :nbytes].view(tensor.dtype)  # [size, numel]
        if tensor.is_contiguous():
            torch.sum(slots, dim=0, out=tensor.view(-1))
        else:
            tensor.copy_(slots.sum(0).view_as(tensor))
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor` (same dtype and numel on every rank), copied out, in rank order."""
        flat = tensor.reshape(-1).contiguous()
        nbytes = flat.numel() * flat.element_size()
        slots = self._exchange(flat.view(torch.uint8))
        return [slots[r, :nbytes].view(tensor.dtype).view(tensor.shape).clone() for r in range(self.size)]

    def broadcast_ints(self, values: torch.Tensor | None, bounded: bool = True) -> torch.Tensor | None:
        """Rank 0's int64 `values` on every rank; None on every rank when they do not fit a slot (the
        caller then sends them another way)."""
        if self.rank == 0:
            fits = (values.numel() + 1) * 8 <= SLOT_BYTES
            length = values.numel() if fits else -1
            message = torch.cat([torch.tensor([length], dtype=torch.int64), values if fits else values[:0]])
            slots = self._exchange(message.view(torch.uint8), bounded)
        else:
            slots = self._exchange(None, bounded)
        length = int(slots[0, :8].view(torch.int64)[0])
        if length < 0:
            return None
        return values if self.rank == 0 else slots[0, 8 : 8 * (length + 1)].view(torch.int64).clone()

    def _wait(self, seq: int, bounded: bool) -> None:
        polls = 0
        started = time.monotonic()
        while int(self.flags.min()) < seq:
            polls += 1
            if polls > _SLEEP_POLLS:
                time.sleep(0.001)
            elif polls > _HOT_POLLS:
                os.sched_yield()
            if polls % _CHECK_EVERY == 0 or polls > _SLEEP_POLLS:
                if not self.peers_alive():
                    raise RuntimeError("a tensor-parallel rank exited during a shared-memory collective")
                if bounded and time.monotonic() - started > self.timeout_s:
                    raise RuntimeError(f"a shared-memory collective waited more than {self.timeout_s:g} s")
