"""ModelRunner: owns the model, the KV memory and the attention backend; runs one forward per step."""

from __future__ import annotations

import logging

import torch

from loomlm.runtime.attention import create_attention_backend
from loomlm.runtime.batch import ScheduledBatch
from loomlm.runtime.config import EngineConfig
from loomlm.runtime.cuda_graph import DecodeGraphRunner
from loomlm.runtime.forward_context import ForwardContext
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.models.cpu_linear import choose_cpu_linear, onednn_available
from loomlm.runtime.models.loader import load_model, resolve_model_path
from loomlm.runtime.models.ops import create_ops

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = config.resolved_device()
        self.dtype = config.resolved_dtype()
        if self.device.type == "cpu" and config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        self.model_path = resolve_model_path(config.model_path)  # dummy weights still read its config
        try:
            self.model, self.model_config = load_model(
                self.model_path,
                load_format=config.load_format,
                dtype=self.dtype,
                device=self.device,
                seed=config.random_seed,
                model_config_override=config.model_overrides() or None,
            )
        except TypeError as exc:  # dataclasses.replace: an override names no model-config field
            raise ValueError(f"json_model_override_args: {exc}") from None
        self.cpu_linear = self._choose_cpu_linear(config.cpu_linear)
        mc = self.model_config
        model_max = mc.max_position_embeddings
        if config.context_length is not None and config.context_length > model_max:
            # The RoPE tables stop at the model's positions: a longer context cannot be served.
            raise ValueError(
                f"context_length {config.context_length} exceeds the model's max_position_embeddings ({model_max})"
            )
        self.context_length = config.context_length or model_max
        self.vocab_size = mc.vocab_size
        per_token = KVPool.bytes_per_token(mc.num_layers, mc.num_kv_heads, mc.head_dim, self.dtype)
        if config.max_total_tokens is not None:
            num_slots = config.max_total_tokens
        else:
            num_slots = config.kv_pool_budget_bytes(self.device) // per_token
            # Never more than every running request at full context could use.
            num_slots = min(num_slots, config.max_running_requests * self.context_length)
        if num_slots < 2:
            raise ValueError(
                f"the KV pool would hold {num_slots} tokens: raise max_total_tokens or mem_fraction_static"
            )
        self.kv_pool = KVPool(num_slots, mc.num_layers, mc.num_kv_heads, mc.head_dim, self.dtype, self.device)
        self.req_pool = ReqToTokenPool(config.max_running_requests, self.context_length, self.device)
        backend = config.resolved_attention_backend()
        self.attn_backend = create_attention_backend(backend, mc.head_dim**-0.5)
        self.model.use_ops(create_ops(backend))  # the Triton backend brings the fused element-wise ops
        logger.info("KV pool: %d token slots (%.1f MiB)", num_slots, num_slots * per_token / 2**20)
        self.graph_runner: DecodeGraphRunner | None = None
        if self.device.type == "cuda" and not config.disable_cuda_graph:
            if backend == "triton":
                self.graph_runner = DecodeGraphRunner(self, min(config.cuda_graph_max_bs, config.max_running_requests))
            else:
                logger.info("CUDA graphs need the triton attention backend; decoding eagerly")

    def _choose_cpu_linear(self, wanted: str) -> str | None:
        """Which path the linear layers take on CPU (None elsewhere), applied to the model and logged."""
        if self.device.type != "cpu":
            return None
        if wanted == "onednn" and not onednn_available():
            raise ValueError("cpu_linear 'onednn' needs a torch build with oneDNN (mkldnn)")
        if wanted == "auto":
            wanted, why = choose_cpu_linear(self.model.linear_weights())
            logger.info("CPU linear layers: %s (%s)", wanted, why)
        if wanted == "onednn":
            self.model.use_packed_linears()
        return wanted

    @property
    def cuda_graph_replays(self) -> int:
        return 0 if self.graph_runner is None else self.graph_runner.replays

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch) -> torch.Tensor:
        """Returns float32 logits [N, vocab] for the rows `batch.logits_indices` (a decode step replayed
        from a CUDA graph returns a view that the next forward overwrites)."""
        if self.graph_runner is not None and self.graph_runner.can_run(batch):
            return self.graph_runner.forward(batch)
        ctx = ForwardContext(batch.to(self.device), self.kv_pool, self.req_pool, self.attn_backend)
        self.attn_backend.prepare(ctx)
        return self.model(ctx)
