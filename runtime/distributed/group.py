"""TensorParallelGroup: the collectives of one tensor-parallel engine, over torch.distributed.

Each engine makes its own process groups from a `TCPStore` on loopback (`torch.distributed`'s
`ProcessGroupGloo`, and `ProcessGroupNCCL` for the compute on CUDA) instead of the process-global
default group, so several engines (and tests) can live in one process. Control messages (each step's
batch, as integers) always go over gloo, which works on host memory; the model's sums and gathers use NCCL when the
weights are on a GPU.

On one CPU host the collectives go through shared memory (`shm_collectives.py`; gloo over loopback
TCP takes about 1.4 ms per sum). A peer that dies closes its sockets, so a gloo collective
waiting on it raises instead of hanging, and a shared-memory one notices through `peers_alive`; one
that hangs is cut off after `timeout`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from loomlm.runtime.distributed.shm_collectives import SharedMemoryCollectives, segment_bytes, shm_supported

_NO_TIMEOUT = timedelta(days=3650)
_JOIN_S = 600.0


class TensorParallelGroup:
    def __init__(
        self,
        rank: int,
        size: int,
        port: int,
        device: torch.device,
        timeout_s: float,
        peers_alive: Callable[[], bool] = lambda: True,
    ):
        """`peers_alive`: False once another rank's process is gone (checked while waiting on shared
        memory; rank 0 watches its children, the others their parent)."""
        self.rank = rank
        self.size = size
        timeout = timedelta(seconds=timeout_s)
        # Joining waits for every rank's process to start and import torch: not bounded by timeout_s.
        joining = timedelta(seconds=max(timeout_s, _JOIN_S))
        self.store = dist.TCPStore("127.0.0.1", port, size, rank == 0, timeout=joining)
        self.control = dist.ProcessGroupGloo(dist.PrefixStore("control", self.store), rank, size, timeout)
        if device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            self.compute = dist.ProcessGroupNCCL(dist.PrefixStore("compute", self.store), rank, size, options)
        else:
            self.compute = self.control
        self.shm: SharedMemoryCollectives | None = None
        if device.type == "cpu" and shm_supported(size):
            self.shm = self._map_shared_memory(port, timeout_s, peers_alive)

    def _map_shared_memory(
        self, port: int, timeout_s: float, peers_alive: Callable[[], bool]
    ) -> SharedMemoryCollectives:
        """Rank 0 makes the segment file, every rank maps it, then rank 0 removes its name (the
        mappings keep it alive and nothing is left behind, whatever happens to the processes)."""
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        path = os.path.join(folder, f"loomlm-tp-{port}-{os.getpid()}")
        if self.rank == 0:
            with open(path, "wb") as f:
                f.truncate(segment_bytes(self.size))
            self.store.set("shm_path", path)
        else:
            path = self.store.get("shm_path").decode()
        shm = SharedMemoryCollectives(path, self.rank, self.size, timeout_s, peers_alive)
        joined = dist.AllreduceOptions()
        joined.timeout = timedelta(seconds=max(timeout_s, _JOIN_S))  # ranks may still be loading weights
        self.control.allreduce([torch.zeros(1)], joined).wait()  # every rank has mapped it
        if self.rank == 0:
            os.unlink(path)
        return shm

    # ---- the model's collectives (every rank calls them in the same order) --------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        if self.shm is not None and self.shm.fits(tensor):
            return self.shm.all_reduce(tensor)
        self.compute.allreduce([tensor]).wait()
        return tensor

    def gather_columns(self, local: torch.Tensor, widths: list[int]) -> torch.Tensor:
        """[N, widths[rank]] on each rank -> [N, sum(widths)] on each, ranks' columns in rank order."""
        widest = max(widths)
        padded = local
        if local.shape[1] < widest:
            padded = torch.nn.functional.pad(local, (0, widest - local.shape[1]))
        if self.shm is not None and self.shm.fits(padded):  # the same answer on every rank: same shapes
            parts = self.shm.all_gather(padded)
        else:
            parts = [torch.empty_like(padded) for _ in range(self.size)]
            self.compute.allgather([parts], [padded.contiguous()]).wait()
        return torch.cat([p[:, :w] for p, w in zip(parts, widths)], dim=1)

    # ---- control: rank 0 sends, the others receive ---------------------------------------------
    def broadcast_ints(self, values: torch.Tensor | None = None, idle: bool = False) -> torch.Tensor:
        """Rank 0's 1-D int64 `values`, on every rank (shared memory, else two gloo broadcasts: the
        length, then the values). `idle`: no time limit, for a rank waiting for its next step (which may
        come any time later) and for the exchange at start-up (ranks finish loading at different
        times); it still fails when a peer is gone."""
        if self.shm is not None:
            values = None if values is None else values.to(torch.int64).contiguous()
            shared = self.shm.broadcast_ints(values, bounded=not idle)
            if shared is not None:
                return shared
        if self.rank == 0:
            payload = values.to(torch.int64).contiguous()
            length = torch.tensor([payload.numel()], dtype=torch.int64)
        else:
            length = torch.zeros(1, dtype=torch.int64)
        if idle:
            self.control.broadcast(length, 0, _NO_TIMEOUT).wait()
        else:
            self.control.broadcast(length, 0).wait()
        if self.rank != 0:
            payload = torch.empty(int(length.item()), dtype=torch.int64)
        if payload.numel():
            self.control.broadcast(payload, 0).wait()
        return payload

    def close(self) -> None:
        for group in {id(self.control): self.control, id(self.compute): self.compute}.values():
            shutdown = getattr(group, "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except RuntimeError:  # a peer already gone
                    pass
