"""Test helper: run one token sequence through a model with the real KV pool and torch attention.

`run_prefill` does one EXTEND forward over the whole sequence; `run_prefill_then_decode` extends a
prefix, then feeds the remaining tokens one DECODE forward at a time (the paged path). Both return
float32 logits [len(token_ids), vocab], row i predicting the token after position i.
Import it from a test with `sys.path.insert(0, str(Path(__file__).parent))` (pytest uses importlib mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loomlm.runtime.attention import create_attention_backend
from loomlm.runtime.forward_context import ForwardBatch, ForwardContext, ForwardMode
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.models.config import ModelConfig


class OneRequest:
    """A single request row of fresh pools sized for `max_len` tokens."""

    def __init__(self, config: ModelConfig, max_len: int, dtype: torch.dtype, device: torch.device):
        self.config = config
        self.device = device
        self.kv_pool = KVPool(max_len, config.num_layers, config.num_kv_heads, config.head_dim, dtype, device)
        self.req_pool = ReqToTokenPool(1, max_len, device)
        self.row = self.req_pool.alloc()
        self.backend = create_attention_backend("torch", scale=config.head_dim**-0.5)
        self.cached = 0  # tokens whose K/V are in the pool

    def forward(self, model: torch.nn.Module, token_ids: Sequence[int], mode: ForwardMode) -> torch.Tensor:
        """Append `token_ids` to the request and return logits for all of them [n, vocab]."""
        n = len(token_ids)
        slots = self.kv_pool.alloc(n).to(self.device)
        self.req_pool.req_to_token[self.row, self.cached : self.cached + n] = slots.to(torch.int32)
        batch = ForwardBatch(
            mode=mode,
            input_ids=torch.tensor(token_ids, dtype=torch.int64, device=self.device),
            positions=torch.arange(self.cached, self.cached + n, device=self.device),
            out_slots=slots,
            req_rows=torch.tensor([self.row], dtype=torch.int64, device=self.device),
            prefix_lens=torch.tensor([self.cached], dtype=torch.int64),
            extend_lens=torch.tensor([n], dtype=torch.int64),
            logits_indices=torch.arange(n, device=self.device),
        )
        ctx = ForwardContext(batch, self.kv_pool, self.req_pool, self.backend)
        self.backend.prepare(ctx)
        logits = model(ctx)
        self.cached += n
        return logits

    def release(self) -> None:
        used = self.req_pool.req_to_token[self.row, : self.cached].to(torch.int64).cpu()
        self.kv_pool.free(used)
        self.req_pool.free(self.row)
        self.kv_pool.check_integrity()
        self.req_pool.check_integrity()
        assert self.kv_pool.used() == 0


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def run_prefill(model: torch.nn.Module, config: ModelConfig, token_ids: Sequence[int]) -> torch.Tensor:
    device, dtype = _device_dtype(model)
    req = OneRequest(config, len(token_ids), dtype, device)
    logits = req.forward(model, token_ids, ForwardMode.EXTEND)
    req.release()
    return logits


def run_prefill_then_decode(
    model: torch.nn.Module, config: ModelConfig, token_ids: Sequence[int], prefix_len: int
) -> torch.Tensor:
    """EXTEND over token_ids[:prefix_len], then one DECODE step per remaining token."""
    assert 1 <= prefix_len <= len(token_ids)
    device, dtype = _device_dtype(model)
    req = OneRequest(config, len(token_ids), dtype, device)
    rows = [req.forward(model, token_ids[:prefix_len], ForwardMode.EXTEND)]
    for tok in token_ids[prefix_len:]:
        rows.append(req.forward(model, [tok], ForwardMode.DECODE))
    req.release()
    return torch.cat(rows)
