"""TensorParallelGroup: the collectives of one tensor-parallel engine, over torch.distributed.

Each engine makes its own process groups from a `TCPStore` on loopback (`torch.distributed`'s
`ProcessGroupGloo`, and `ProcessGroupNCCL` for the compute on CUDA) instead of the process-global
default group, so several engines (and tests) can live in one process. Control messages (each step's
batch, as integers) always go over gloo, which works on host memory; the model's sums and gathers use NCCL when the
weights are on a GPU.

A peer that dies closes its sockets, so a collective waiting on it raises instead of hanging; one that
hangs is cut off after `timeout`.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist


class TensorParallelGroup:
    def __init__(self, rank: int, size: int, port: int, device: torch.device, timeout_s: float):
        self.rank = rank
        self.size = size
        timeout = timedelta(seconds=timeout_s)
        self.store = dist.TCPStore("127.0.0.1", port, size, rank == 0, timeout=timeout)
        self.control = dist.ProcessGroupGloo(dist.PrefixStore("control", self.store), rank, size, timeout)
        if device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            self.compute = dist.ProcessGroupNCCL(dist.PrefixStore("compute", self.store), rank, size, options)
        else:
            self.compute = self.control

    # ---- the model's collectives (every rank calls them in the same order) --------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        self.compute.allreduce([tensor]).wait()
        return tensor

    def gather_columns(self, local: torch.Tensor, widths: list[int]) -> torch.Tensor:
        """[N, widths[rank]] on each rank -> [N, sum(widths)] on each, ranks' columns in rank order."""
        widest = max(widths)
        padded = local
        if local.shape[1] < widest:
            padded = torch.nn.functional.pad(local, (0, widest - local.shape[1]))
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self.compute.allgather([parts], [padded.contiguous()]).wait()
        return torch.cat([p[:, :w] for p, w in zip(parts, widths)], dim=1)

    # ---- control: rank 0 sends, the others receive ---------------------------------------------
    def broadcast_ints(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Rank 0's 1-D int64 `values`, on every rank (two broadcasts: the length, then the values)."""
        if self.rank == 0:
            payload = values.to(torch.int64).contiguous()
            length = torch.tensor([payload.numel()], dtype=torch.int64)
        else:
            length = torch.zeros(1, dtype=torch.int64)
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
