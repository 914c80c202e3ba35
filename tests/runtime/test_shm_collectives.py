"""Shared-memory collectives (the CPU path of tensor parallelism), with threads standing in for the
ranks: each maps the same segment file, as the rank processes do. Oracles: torch's own sum and the
inputs themselves."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.distributed.shm_collectives import SharedMemoryCollectives, segment_bytes, shm_supported

pytestmark = pytest.mark.skipif(not shm_supported(2), reason="shared-memory collectives are x86-only")


def _ranks(tmp_path, size: int, alive=lambda: True, timeout_s: float = 60.0) -> list[SharedMemoryCollectives]:
    path = tmp_path / "segment"
    with open(path, "wb") as f:
        f.truncate(segment_bytes(size))
    return [SharedMemoryCollectives(str(path), r, size, timeout_s, alive) for r in range(size)]


def _on_every_rank(ranks, work):
    out: list = [None] * len(ranks)

    def one(r: int) -> None:
        out[r] = work(r, ranks[r])

    threads = [threading.Thread(target=one, args=(r,)) for r in range(len(ranks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@settings(max_examples=25, deadline=None)
@given(
    st.integers(2, 4),
    st.lists(st.integers(1, 7), min_size=1, max_size=3),
    st.sampled_from([torch.float32, torch.bfloat16]),
    st.integers(1, 3),
)
def test_sums_gathers_and_broadcasts_agree_with_their_oracles(tmp_path_factory, size, shape, dtype, rounds):
    ranks = _ranks(tmp_path_factory.mktemp("shm"), size)
    gen = torch.Generator().manual_seed(sum(shape) * size)
    inputs = [[torch.randn(shape, generator=gen).to(dtype) for _ in range(size)] for _ in range(rounds)]

    def work(r, rank):
        results = []
        for k in range(rounds):  # several rounds: the slot sets alternate
            summed = rank.all_reduce(inputs[k][r].clone())
            gathered = rank.all_gather(inputs[k][r])
            sent = torch.arange(k + 3, dtype=torch.int64) * 7
            received = rank.broadcast_ints(sent if r == 0 else None)
            results.append((summed, gathered, received))
        return results

    out = _on_every_rank(ranks, work)
    for k in range(rounds):
        expected = torch.stack(inputs[k]).sum(0)
        for r in range(size):
            summed, gathered, received = out[r][k]
            assert torch.equal(summed, out[0][k][0])  # the same bits on every rank
            assert torch.allclose(summed.float(), expected.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
            assert all(torch.equal(g, x) for g, x in zip(gathered, inputs[k]))
            assert torch.equal(received, torch.arange(k + 3, dtype=torch.int64) * 7)


def test_a_broadcast_too_large_for_a_slot_says_so_on_every_rank(tmp_path):
    from loomlm.runtime.distributed.shm_collectives import SLOT_BYTES

    ranks = _ranks(tmp_path, 2)
    big = torch.zeros(SLOT_BYTES // 8, dtype=torch.int64)
    assert _on_every_rank(ranks, lambda r, rank: rank.broadcast_ints(big if r == 0 else None)) == [None, None]


def test_a_dead_peer_fails_the_wait(tmp_path):
    (alone,) = _ranks(tmp_path, 2, alive=lambda: False)[:1]
    with pytest.raises(RuntimeError, match="exited"):
        alone.all_reduce(torch.ones(3))
