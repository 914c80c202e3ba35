"""KV slot pool and request-row pool: exact accounting under random alloc/free sequences."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.memory_pool import KVPool, OutOfSlotsError, ReqToTokenPool


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 20)), max_size=40))
def test_alloc_free_accounting(ops):
    pool = KVPool(64, num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu")
    owned: list[torch.Tensor] = []
    for is_alloc, n in ops:
        if is_alloc:
            if n > pool.available():
                with pytest.raises(OutOfSlotsError):
                    pool.alloc(n)
                continue
            owned.append(pool.alloc(n))
        elif owned:
            pool.free(owned.pop(n % len(owned)))
        held = torch.cat(owned) if owned else torch.empty(0, dtype=torch.int64)
        assert torch.unique(held).numel() == held.numel()  # no slot handed out twice
        assert pool.used() == held.numel()
        pool.check_integrity()
    for slots in owned:
        pool.free(slots)
    assert pool.available() == 64


def test_double_free_is_refused():
    pool = KVPool(4, 1, 1, 2, torch.float32, "cpu")
    slots = pool.alloc(4)
    pool.free(slots)
    with pytest.raises(RuntimeError):
        pool.free(slots)


def test_request_rows():
    rows = ReqToTokenPool(2, 8, "cpu")
    a, b = rows.alloc(), rows.alloc()
    with pytest.raises(OutOfSlotsError):
        rows.alloc()
    rows.free(a)
    with pytest.raises(RuntimeError):
        rows.free(a)
    rows.free(b)
    assert rows.available() == 2
