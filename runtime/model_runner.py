"""ModelRunner: owns the model, the KV memory and the attention backend; runs one forward per step."""

from __future__ import annotations

import logging
import os

import torch

from loomlm.runtime.attention import create_attention_backend
from loomlm.runtime.attention.cpu_backend import choose_cpu_attention
from loomlm.runtime.batch import ScheduledBatch
from loomlm.runtime.config import EngineConfig
from loomlm.runtime.cuda_graph import DecodeGraphRunner
from loomlm.runtime.distributed.driver import TensorParallelDriver
from loomlm.runtime.distributed.group import TensorParallelGroup
from loomlm.runtime.distributed.plan import TensorParallelPlan
from loomlm.runtime.forward_context import ForwardBatch, ForwardContext
from loomlm.runtime.memory_pool import KVPool, ReqToTokenPool
from loomlm.runtime.models.cpu_dtype import choose_cpu_dtype
from loomlm.runtime.models.cpu_linear import choose_cpu_linear, onednn_available
from loomlm.runtime.models.int4_linear import int4_available
from loomlm.runtime.models.int8_linear import int8_available
from loomlm.runtime.models.loader import checkpoint_int4_groups, load_model, read_model_config, resolve_model_path
from loomlm.runtime.models.ops import create_ops

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig, tp_rank: int = 0, tp_port: int | None = None):
        """`tp_rank` / `tp_port`: set on ranks 1..N-1 of a tensor-parallel engine (`follower.py`);
        rank 0 (the default) starts them itself when `config.tp_size` > 1."""
        self.config = config
        self.tp_rank = tp_rank
        self.tp_driver: TensorParallelDriver | None = None
        self.tp_group: TensorParallelGroup | None = None
        self.device = config.resolved_device()
        if self.device.type == "cuda" and config.tp_size > 1:
            self.device = torch.device("cuda", tp_rank)  # one GPU per rank
            torch.cuda.set_device(self.device)  # NCCL works on the current device
        if self.device.type == "cpu" and config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        elif self.device.type == "cpu" and config.tp_size > 1:  # the ranks share the machine's cores
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // config.tp_size))
        self.model_path = resolve_model_path(config.model_path)  # dummy weights still read its config
        self.dtype = self._resolve_dtype(config)
        # Tensor parallel on GPUs: read the checkpoint into host memory and move only this rank's share.
        split_on_host = config.tp_size > 1 and self.device.type == "cuda"
        try:
            self.model, self.model_config = load_model(
                self.model_path,
                load_format=config.load_format,
                dtype=self.dtype,
                device=torch.device("cpu") if split_on_host else self.device,
                seed=config.random_seed,
                model_config_override=config.model_overrides() or None,
            )
        except TypeError as exc:  # dataclasses.replace: an override names no model-config field
            raise ValueError(f"json_model_override_args: {exc}") from None
        mc = self.model_config
        kv_heads = sizing_kv_heads = mc.num_kv_heads
        if config.tp_size > 1:
            plan = TensorParallelPlan.for_rank(mc, tp_rank, config.tp_size)  # a model that cannot split: ValueError
            self.tp_group = self._join_tensor_parallel(tp_port)
            self.model.use_tensor_parallel(self.tp_group, plan)
            self.model.to(self.device)
            kv_heads, sizing_kv_heads = plan.num_kv_heads, plan.max_kv_heads
        try:
            self._build(config, kv_heads, sizing_kv_heads)
        except BaseException:
            self.close()
            raise

    def _resolve_dtype(self, config: EngineConfig) -> torch.dtype:
        """`dtype`, or for `auto` on CPU the measured choice (runtime/models/cpu_dtype.py). Tensor-parallel
        ranks would each measure for themselves and could disagree: they keep the fixed default."""
        if config.dtype != "auto" or self.device.type != "cpu" or config.quantization or config.tp_size > 1:
            return config.resolved_dtype()
        mc = read_model_config(self.model_path)
        dtype, why = choose_cpu_dtype(mc.hidden_size, mc.intermediate_size)
        logger.info("dtype auto on CPU: %s (%s)", str(dtype).removeprefix("torch."), why)
        return dtype

    def _join_tensor_parallel(self, port: int | None) -> TensorParallelGroup:
        if self.tp_rank == 0:
            self.tp_driver = TensorParallelDriver(self.config, self.device)
            return self.tp_driver.group
        parent = os.getppid()  # rank 0's process
        alive = lambda: os.getppid() == parent
        return TensorParallelGroup(
            self.tp_rank, self.config.tp_size, port, self.device, self.config.tp_timeout_s, alive
        )

    def _build(self, config: EngineConfig, kv_heads: int, sizing_kv_heads: int) -> None:
        """The KV memory, the attention backend and the CPU linear path, after the weights."""
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
        # Tensor parallel: every rank sizes its pool for the most KV heads a rank holds, and rank 0's
        # slot count is everyone's (slot indices are rank 0's scheduler's).
        per_token = KVPool.bytes_per_token(mc.num_layers, sizing_kv_heads, mc.head_dim, self.dtype)
        if config.max_total_tokens is not None:
            num_slots = config.max_total_tokens
        else:
            num_slots = config.kv_pool_budget_bytes(self.device) // per_token
            # Never more than every running request at full context could use.
            num_slots = min(num_slots, config.max_running_requests * self.context_length)
        if self.tp_group is not None:
            # Not bounded by tp_timeout_s: the ranks finish loading their weights at different times.
            num_slots = int(self.tp_group.broadcast_ints(torch.tensor([num_slots]), idle=True)[0])
        if num_slots < 2:
            raise ValueError(
                f"the KV pool would hold {num_slots} tokens: raise max_total_tokens or mem_fraction_static"
            )
        self.kv_pool = KVPool(num_slots, mc.num_layers, kv_heads, mc.head_dim, self.dtype, self.device)
        self.req_pool = ReqToTokenPool(config.max_running_requests, self.context_length, self.device)
        backend = config.resolved_attention_backend()
        if backend == "cpu":
            if self.device.type != "cpu":
                raise ValueError(f"attention_backend 'cpu' runs on the CPU, not on {self.device}")
            backend = choose_cpu_attention(config.attention_backend)
        self.attention_backend = backend  # the resolved name (cpu falls back to torch without its kernels)
        self.attn_backend = create_attention_backend(backend, mc.head_dim**-0.5)
        self.model.use_ops(create_ops(backend))  # the Triton backend brings the fused element-wise ops
        logger.info(
            "KV pool: %d token slots (%.1f MiB); attention backend %s",
            num_slots,
            num_slots * per_token / 2**20,
            backend,
        )
        self.graph_runner: DecodeGraphRunner | None = None
        if self.device.type == "cuda" and not config.disable_cuda_graph:
            if config.tp_size > 1:
                logger.info("CUDA graphs are not captured with tensor parallelism yet; decoding eagerly")
            elif backend == "triton":
                self.graph_runner = DecodeGraphRunner(self, min(config.cuda_graph_max_bs, config.max_running_requests))
            else:
                logger.info("CUDA graphs need the triton attention backend; decoding eagerly")

    def _choose_cpu_linear(self, wanted: str) -> str | None:
        """Which path the linear layers take on CPU (None elsewhere), applied to the model and logged."""
        quantization = self.config.quantization
        self.int4_checkpoint_projections = 0  # int4 projections made from the checkpoint's own codes
        if quantization is not None:
            if self.device.type != "cpu":
                raise ValueError(f"quantization {quantization!r} runs on the CPU only (PyTorch's weight-only kernels)")
            if quantization == "int8" and not int8_available():
                raise ValueError("quantization 'int8' needs torch._weight_int8pack_mm (PyTorch >= 2.3)")
            if quantization == "int4" and not int4_available():
                raise ValueError("quantization 'int4' needs torch._weight_int4pack_mm_for_cpu (PyTorch >= 2.6)")
            before = self.weight_bytes()
            # int4 keeps a Q4_1 checkpoint's own codes (not with tensor parallelism: its shards are cut)
            groups = {}
            if quantization == "int4" and self.config.tp_size == 1:
                groups = checkpoint_int4_groups(self.model_path, self.config.load_format, self.model_config)
            kept = self.model.use_quantized_weights(8 if quantization == "int8" else 4, groups)
            self.int4_checkpoint_projections = kept
            logger.info(
                "%s weight-only linear layers: weights %.1f MiB (were %.1f); %d of %d projections keep the "
                "checkpoint's own 4-bit codes",
                quantization,
                self.weight_bytes() / 2**20,
                before / 2**20,
                kept,
                4 * len(self.model.layers),
            )
            return quantization
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

    def weight_bytes(self) -> int:
        """Bytes of the model's parameters and buffers (the RoPE tables included), each tensor once."""
        seen: dict[int, int] = {}
        for t in [*self.model.parameters(), *self.model.buffers()]:
            seen[id(t)] = t.numel() * t.element_size()
        extra = self.model.head_int8 or ()
        return sum(seen.values()) + sum(t.numel() * t.element_size() for t in extra)

    @property
    def cuda_graph_replays(self) -> int:
        return 0 if self.graph_runner is None else self.graph_runner.replays

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch) -> torch.Tensor:
        """Returns float32 logits [N, vocab] for the rows `batch.logits_indices` (a decode step replayed
        from a CUDA graph returns a view that the next forward overwrites)."""
        if self.graph_runner is not None and self.graph_runner.can_run(batch):
            return self.graph_runner.forward(batch)
        driver = self.tp_driver
        if driver is None:
            return self.forward_local(batch)
        driver.send_forward(batch, self.req_pool)  # the other ranks run the same forward with theirs
        return driver.guarded(lambda: self.forward_local(batch))

    @torch.inference_mode()
    def forward_local(self, batch: ForwardBatch) -> torch.Tensor:
        """This rank's forward of `batch` (with tensor parallelism, every rank runs it at once)."""
        ctx = ForwardContext(batch.to(self.device), self.kv_pool, self.req_pool, self.attn_backend)
        self.attn_backend.prepare(ctx)
        return self.model(ctx)

    def close(self) -> None:
        """Stop and reap the other tensor-parallel ranks (rank 0); nothing to do otherwise."""
        if self.tp_driver is not None:
            self.tp_driver.close()
            self.tp_driver = None
