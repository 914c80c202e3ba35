"""Llama-family decoder (Llama 2/3, SmolLM, Qwen2, Mistral) in plain PyTorch over flattened tokens.

All requests of a forward are flattened into T tokens (`ctx.batch.input_ids`); attention goes through
`ctx.attn_backend`, which owns the KV pool. Only the rows `ctx.batch.logits_indices` reach the final norm and
the LM head. q/k/v and gate/up are fused into one matmul each; `load_weights` takes Hugging Face
parameter names and copies each shard into its slice of the fused weights. The element-wise ops (norms
with the residual add fused, RoPE, SiLU-and-mul) come from `self.ops`: eager torch, or the Triton
kernels (`use_ops`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from loomlm.runtime.distributed.plan import TensorParallelPlan
from loomlm.runtime.distributed.sharding import shard_llama
from loomlm.runtime.forward_context import ForwardContext
from loomlm.runtime.models import cpu_decode
from loomlm.runtime.models.config import ModelConfig, RopeScaling
from loomlm.runtime.models.cpu_linear import PackedLinear, onednn_linear, packed_weight
from loomlm.runtime.models.int4_linear import Int4Linear
from loomlm.runtime.models.int8_linear import Int8Linear, int8_linear, quantize_rows
from loomlm.runtime.models.ops import Ops, TorchOps

if TYPE_CHECKING:
    from loomlm.runtime.distributed.group import TensorParallelGroup


class RMSNorm(nn.Module):
    """Holds the weight; the arithmetic (and the fused residual add) is `ops.rms_norm`."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(
        self, x: torch.Tensor, ops: Ops, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised x [+ residual], x [+ residual]); the second is the next layer's residual."""
        return ops.rms_norm(x, self.weight, self.eps, residual)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies, after rope scaling."""
    dim = config.head_dim
    # Explicit CPU device: this also runs while the model is built under `torch.device("meta")`.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling: RopeScaling | None = config.rope_scaling
    if scaling is None or scaling.type == "default":
        return inv_freq
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    old_ctx = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_ctx / scaling.low_freq_factor, inv_freq / scaling.factor, inv_freq)
    smooth = (old_ctx / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= old_ctx / scaling.high_freq_factor) & (wavelen <= old_ctx / scaling.low_freq_factor)
    return torch.where(medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables [max_positions, head_dim // 2] built once; rows are gathered by position."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.build(rope_inv_freq(config))

    def build(self, inv_freq: torch.Tensor, device: torch.device | str | None = None) -> None:
        """(Re)compute the tables, e.g. after `to_empty` or with GGUF per-dimension frequency factors."""
        device = device if device is not None else self.cos.device
        positions = torch.arange(self.config.max_position_embeddings, dtype=torch.float32, device="cpu")
        freqs = torch.outer(positions, inv_freq.float().cpu())  # [P, D/2]
        self.cos = freqs.cos().to(device)
        self.sin = freqs.sin().to(device)

    def inputs(self, positions: torch.Tensor, dtype: torch.dtype, ops: Ops) -> Any:
        """This forward's RoPE inputs for `ops.rope` (prepared once, used by every layer)."""
        return ops.rope_inputs(positions, self.cos, self.sin, dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        qkv_out = config.q_size + 2 * config.kv_size
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_out, bias=config.attention_bias, dtype=dtype)
        self.o_proj = nn.Linear(config.q_size, config.hidden_size, bias=config.attention_out_bias, dtype=dtype)
        self.tp: TensorParallelGroup | None = None  # set by use_tensor_parallel: o_proj is row parallel

    def forward(self, x: torch.Tensor, rope: Any, ctx: ForwardContext, ops: Ops) -> torch.Tensor:
        T = x.shape[0]
        H, KVH, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj.forward(x)  # [T, (H + 2 KVH) D]
        qk_width = (H + KVH) * D  # slices, not Tensor.split: its Python wrapper costs more than the views
        qk = ops.rope(qkv[:, :qk_width].view(T, H + KVH, D), rope)  # q and k in one pass
        q, k = qk[:, :H], qk[:, H:]  # [T, H, D], [T, KVH, D]
        out = ctx.attn_backend.forward(q, k, qkv[:, qk_width:].view(T, KVH, D), self.layer_id, ctx)  # [T, H, D]
        out = self.o_proj.forward(out.reshape(T, H * D))
        return out if self.tp is None else self.tp.all_reduce(out)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * inter, bias=config.mlp_bias, dtype=dtype)
        self.down_proj = nn.Linear(inter, config.hidden_size, bias=config.mlp_bias, dtype=dtype)
        self.tp: TensorParallelGroup | None = None  # set by use_tensor_parallel: down_proj is row parallel

    def forward(self, x: torch.Tensor, ops: Ops) -> torch.Tensor:
        out = self.down_proj.forward(ops.silu_and_mul(self.gate_up_proj.forward(x)))  # [T, 2I] -> [T, I] -> [T, hidden]
        return out if self.tp is None else self.tp.all_reduce(out)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.attn = Attention(config, layer_id, dtype)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, dtype)

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, rope: Any, ctx: ForwardContext, ops: Ops
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h: the previous layer's MLP output (or the embeddings, with residual None). Returns this
        layer's MLP output and the residual stream before it; their sum is the layer's output."""
        x, residual = self.input_norm.forward(h, ops, residual)
        x, residual = self.post_attn_norm.forward(self.attn.forward(x, rope, ctx, ops), ops, residual)
        return self.mlp.forward(x, ops), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(config, i, dtype) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        # Tied: the head reuses embed_tokens.weight, so there is no separate parameter to load.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
        )
        self.rotary = RotaryEmbedding(config)
        self.ops: Ops = TorchOps()
        # The LM head's oneDNN-packed weight when `use_packed_linears` ran (a plain tensor attribute:
        # not a parameter, so the state dict keeps its names).
        self.head_packed: torch.Tensor | None = None
        # The tied LM head's int8 weight and scales when `use_quantized_weights` ran (the embedding itself
        # stays as it is: lookups need the rows).
        self.head_int8: tuple[torch.Tensor, torch.Tensor] | None = None
        # Tensor parallel (use_tensor_parallel): the group, this rank's vocabulary range and every
        # rank's vocabulary width (the LM head's gathered columns).
        self.tp: TensorParallelGroup | None = None
        self.vocab_range = (0, config.vocab_size)
        self.vocab_widths = [config.vocab_size]
        # The C++ decode loop's plan (runtime/models/cpu_decode.py): (KV pool, plan or None), built at the
        # first CPU decode step; dropped whenever the projections, op set or split change.
        self.decode_plan: tuple[Any, Any] | None = None

    def forget_decode_plan(self) -> None:
        self.decode_plan = None

    def use_tensor_parallel(self, group: TensorParallelGroup, plan: TensorParallelPlan) -> None:
        """Keep only `plan`'s share of the weights; the forward then sums and gathers over `group`."""
        shard_llama(self, plan)
        self.forget_decode_plan()
        self.tp = group
        for layer in self.layers:
            layer.attn.tp = layer.mlp.tp = group
        self.vocab_range = plan.vocab
        config = self.config
        self.vocab_widths = [
            b - a for a, b in (TensorParallelPlan.for_rank(config, r, plan.size).vocab for r in range(plan.size))
        ]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] ids -> [T, hidden]; vocabulary parallel: each rank looks up its own ids, the sum joins them."""
        if self.tp is None:
            return self.embed_tokens(input_ids)
        start, end = self.vocab_range
        mine = (input_ids >= start) & (input_ids < end)
        h = self.embed_tokens((input_ids - start).clamp_(0, end - start - 1))
        return self.tp.all_reduce(h * mine.unsqueeze(1).to(h.dtype))

    def use_ops(self, ops: Ops) -> None:
        """Run the element-wise ops with `ops` (e.g. the Triton kernels on CUDA)."""
        self.forget_decode_plan()
        self.ops = ops

    def head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def linear_weights(self) -> list[torch.Tensor]:
        """The weights of every projection and of the LM head, [out, in] each."""
        projections = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        return [*projections, self.head_weight()] if self.lm_head is None else projections

    # Each fused projection and the checkpoint tensors it is made of, in row order.
    PROJECTION_PARTS = {
        "qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "o_proj": ("self_attn.o_proj",),
        "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
        "down_proj": ("mlp.down_proj",),
    }

    def _replace_projections(self, make: Any) -> None:
        """Every layer's four projections replaced by `make(linear, checkpoint names of its parts)`."""
        self.forget_decode_plan()
        for i, layer in enumerate(self.layers):
            for name, parts in self.PROJECTION_PARTS.items():
                parent = layer.attn if name in ("qkv_proj", "o_proj") else layer.mlp
                names = [f"model.layers.{i}.{part}.weight" for part in parts]
                setattr(parent, name, make(getattr(parent, name), names))

    def use_packed_linears(self) -> None:
        """Run every projection and the LM head with oneDNN over packed weights (CPU; `cpu_linear`)."""
        self._replace_projections(lambda linear, _names: PackedLinear.of(linear))
        self.head_packed = packed_weight(self.head_weight())

    def use_quantized_weights(self, bits: int, groups: dict[str, tuple[torch.Tensor, ...]] | None = None) -> int:
        """Every projection as a weight-only int8 or int4 layer (CPU; `quantization`). The LM head is
        int8 either way: tied, it is the embedding (the default model's is Q8_0), and int8 rows keep the
        logits closer than 4-bit groups would. `groups`: the checkpoint's own 4-bit groups by tensor
        name (a Q4_1 GGUF's codes, d and m); an int4 projection whose parts all have them keeps those
        codes instead of quantizing its float weight. Returns how many projections did."""
        dtype = self.embed_tokens.weight.dtype
        groups = groups or {}
        kept = 0

        def make(linear: nn.Linear, names: list[str]) -> nn.Module:
            nonlocal kept
            if bits == 8:
                return Int8Linear.of(linear, dtype)
            if not all(n in groups for n in names):
                return Int4Linear.of(linear, dtype)
            kept += 1
            parts = [groups[n] for n in names]
            joined = tuple(torch.cat([p[j] for p in parts]) for j in range(3))  # rows in the fused order
            return Int4Linear(None, linear.bias, dtype, groups=joined)

        self._replace_projections(make)
        if self.lm_head is None:
            self.head_int8 = quantize_rows(self.embed_tokens.weight, dtype)
        else:
            self.lm_head = Int8Linear.of(self.lm_head, dtype)
        return kept

    @torch.inference_mode()
    def forward(self, ctx: ForwardContext) -> torch.Tensor:
        """Returns float32 logits [N, vocab] for the hidden rows `ctx.batch.logits_indices`."""
        ops = self.ops
        h = self.embed(ctx.batch.input_ids)  # [T, hidden]
        rope = self.rotary.inputs(ctx.batch.positions, h.dtype, ops)
        residual = None
        # Submodules' forward is called directly (here and in the layers): nn.Module.__call__ costs ~2 us
        # of hook checks a call, and a decode step makes ~270 of them (no hooks are ever registered).
        plan = cpu_decode.plan_for(self, ctx)
        if plan is not None:  # every layer in one C++ call (CPU decode)
            h, residual = cpu_decode.run_layers(plan, h, rope, ctx)
        else:
            for layer in self.layers:
                h, residual = layer.forward(h, residual, rope, ctx, ops)
        idx = ctx.batch.logits_indices
        h, _ = self.norm.forward(h[idx], ops, residual[idx])  # [N, hidden]
        if self.head_int8 is not None:
            logits = int8_linear(h, *self.head_int8)
        elif isinstance(self.lm_head, Int8Linear):
            logits = self.lm_head(h)
        elif self.head_packed is None:
            logits = F.linear(h, self.head_weight())
        else:
            logits = onednn_linear(h, self.head_packed, None)
        if self.tp is not None:  # [N, this rank's vocabulary] -> [N, vocab]
            logits = self.tp.gather_columns(logits, self.vocab_widths)
        return logits.float()  # [N, vocab]

    # ------------------------------------------------------------------ weights

    def _target(self, hf_name: str) -> tuple[torch.Tensor, int, int] | None:
        """Map a HF parameter name to (our parameter, row offset, row count); None = ignore it."""
        cfg = self.config
        parts = hf_name.split(".")
        if hf_name == "model.embed_tokens.weight":
            return self.embed_tokens.weight, 0, cfg.vocab_size
        if hf_name == "model.norm.weight":
            return self.norm.weight, 0, cfg.hidden_size
        if hf_name == "lm_head.weight":
            return None if self.lm_head is None else (self.lm_head.weight, 0, cfg.vocab_size)
        if parts[:2] != ["model", "layers"] or len(parts) < 5:
            raise KeyError(hf_name)
        layer: DecoderLayer = self.layers[int(parts[2])]
        sub, leaf = ".".join(parts[3:-1]), parts[-1]
        fused = {
            "self_attn.q_proj": (layer.attn.qkv_proj, 0, cfg.q_size),
            "self_attn.k_proj": (layer.attn.qkv_proj, cfg.q_size, cfg.kv_size),
            "self_attn.v_proj": (layer.attn.qkv_proj, cfg.q_size + cfg.kv_size, cfg.kv_size),
            "mlp.gate_proj": (layer.mlp.gate_up_proj, 0, cfg.intermediate_size),
            "mlp.up_proj": (layer.mlp.gate_up_proj, cfg.intermediate_size, cfg.intermediate_size),
            "self_attn.o_proj": (layer.attn.o_proj, 0, cfg.hidden_size),
            "mlp.down_proj": (layer.mlp.down_proj, 0, cfg.hidden_size),
            "input_layernorm": (layer.input_norm, 0, cfg.hidden_size),
            "post_attention_layernorm": (layer.post_attn_norm, 0, cfg.hidden_size),
        }
        if sub == "self_attn.rotary_emb":  # old checkpoints store inv_freq; we compute our own
            return None
        if sub not in fused:
            raise KeyError(hf_name)
        module, offset, rows = fused[sub]
        param = getattr(module, leaf, None)
        if not isinstance(param, torch.Tensor):
            raise KeyError(hf_name)
        return param, offset, rows

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (HF name, tensor) pairs into the (fused) parameters; every parameter must be covered."""
        rows_loaded: dict[int, int] = {}
        seen: set[str] = set()
        for name, tensor in weights:
            try:
                target = self._target(name)
            except (KeyError, ValueError, IndexError):
                raise ValueError(
                    f"unexpected weight {name!r} for a {self.config.architecture} model "
                    f"with {self.config.num_layers} layers"
                ) from None
            if target is None:
                continue
            if name in seen:
                raise ValueError(f"weight {name!r} appears twice in the checkpoint")
            seen.add(name)
            param, offset, rows = target
            dest = param.data[offset : offset + rows]
            if tuple(tensor.shape) != tuple(dest.shape):
                raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
            dest.copy_(tensor)
            rows_loaded[id(param)] = rows_loaded.get(id(param), 0) + rows
        missing = [n for n, p in self.named_parameters() if rows_loaded.get(id(p), 0) != p.shape[0]]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"checkpoint is missing weights for {len(missing)} parameters: {shown}")
