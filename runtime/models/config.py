"""`ModelConfig`: the shape of a Llama-family model, read from a HF config.json or from GGUF metadata.

One frozen dataclass covers Llama 2/3, SmolLM/SmolLM2, Qwen2 (bias on q/k/v) and Mistral. Both
constructors normalise their source's spelling (e.g. transformers 5's `rope_parameters` vs the older
`rope_theta` + `rope_scaling`) so the model only ever reads these fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Architecture names as they appear in HF `model_type` / GGUF `general.architecture`.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
GGUF_ARCHITECTURES = ("llama", "qwen2")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `linear` divides every frequency by `factor`; `llama3` divides only the
    low frequencies and interpolates the band between `low_freq_factor` and `high_freq_factor`."""

    type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only

    def __post_init__(self) -> None:
        if self.type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"unsupported rope scaling type {self.type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if not self.factor > 0:
            raise ValueError(f"rope scaling factor must be > 0, got {self.factor}")
        if self.type == "llama3":
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ValueError(
                    "llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor, got "
                    f"{self.low_freq_factor} and {self.high_freq_factor}"
                )
            if self.original_max_position_embeddings <= 0:
                raise ValueError("llama3 rope scaling needs original_max_position_embeddings > 0")

    @classmethod
    def from_hf(cls, d: dict[str, Any] | None) -> RopeScaling | None:
        """Parse HF `rope_scaling` / `rope_parameters` (keys `rope_type` or legacy `type`)."""
        if not d:
            return None
        kind = d.get("rope_type", d.get("type")) or "default"
        if kind == "default":
            return None
        if kind not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"unsupported rope scaling type {kind!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
        casts = {
            "factor": float,
            "low_freq_factor": float,
            "high_freq_factor": float,
            "original_max_position_embeddings": int,
        }
        return cls(type=kind, **{k: casts[k](v) for k, v in d.items() if k in casts and v is not None})


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # one of SUPPORTED_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on the q/k/v projections (Qwen2; Llama attention_bias)
    attention_out_bias: bool = False  # bias on o_proj too (Llama attention_bias=True only)
    mlp_bias: bool = False
    # Mistral v0.1 style sliding window. NOT applied by the attention backends: outputs match the
    # reference only for contexts up to this length, so the runtime should cap the context to it.
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported model architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not (self.rms_norm_eps > 0 and math.isfinite(self.rms_norm_eps)):
            raise ValueError(f"rms_norm_eps must be a positive finite number, got {self.rms_norm_eps}")
        if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise ValueError(f"rope_theta must be a positive finite number, got {self.rope_theta}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(
                "rope_scaling must be a RopeScaling or None (use RopeScaling.from_hf for a config.json dict)"
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}")
        for tok in ((self.bos_token_id,) if self.bos_token_id is not None else ()) + self.eos_token_ids:
            if not 0 <= tok < self.vocab_size:
                raise ValueError(f"special token id {tok} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a Hugging Face config.json dict (transformers 4.x or 5.x spelling)."""
        arch = d.get("model_type")
        if arch not in SUPPORTED_ARCHITECTURES:
            named = d.get("architectures") or []
            raise ValueError(
                f"unsupported model architecture {arch!r} (architectures={named}); "
                f"supported model_type: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r}; the Llama family uses 'silu'")
        # transformers 5 folds rope_theta into rope_parameters; 4.x keeps rope_theta + rope_scaling.
        rope_params = d.get("rope_parameters") or {}
        rope_theta = rope_params.get("rope_theta", d.get("rope_theta", 10000.0))
        rope_scaling = RopeScaling.from_hf(rope_params or d.get("rope_scaling"))
        num_heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        llama_bias = bool(d.get("attention_bias", False))
        if arch == "qwen2":
            window = d.get("sliding_window") if d.get("use_sliding_window", False) else None
        else:
            window = d.get("sliding_window")
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        return cls(
            architecture=arch,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
            head_dim=int(d.get("head_dim") or hidden // num_heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if arch == "qwen2" else llama_bias,
            attention_out_bias=llama_bias if arch == "llama" else False,
            mlp_bias=bool(d.get("mlp_bias", False)),
            sliding_window=int(window) if window else None,
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=tuple(int(t) for t in eos_ids),
        )

    @classmethod
    def from_gguf_metadata(cls, reader: Any) -> ModelConfig:
        """Build from a `gguf.GGUFReader` (metadata keys are prefixed by the architecture name)."""

        def get(key: str, default: Any = None) -> Any:
            field = reader.fields.get(key)
            return default if field is None else field.contents()

        arch = get("general.architecture")
        if arch not in GGUF_ARCHITECTURES:
            # llama.cpp writes Mistral and SmolLM checkpoints with architecture "llama".
            raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}")
        tensor_names = {t.name for t in reader.tensors}
        hidden = int(get(f"{arch}.embedding_length"))
        num_heads = int(get(f"{arch}.attention.head_count"))
        vocab = get(f"{arch}.vocab_size")
        if vocab is None:
            vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
        head_dim = get(f"{arch}.attention.key_length") or get(f"{arch}.rope.dimension_count")
        scaling_type = get(f"{arch}.rope.scaling.type")
        rope_scaling = None
        if scaling_type not in (None, "none"):
            rope_scaling = RopeScaling.from_hf(
                {"rope_type": scaling_type, "factor": get(f"{arch}.rope.scaling.factor", 1.0)}
            )
        window = get(f"{arch}.attention.sliding_window")
        eos = get("tokenizer.ggml.eos_token_id")
        return cls(
            architecture=arch,
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(get(f"{arch}.feed_forward_length")),
            num_layers=int(get(f"{arch}.block_count")),
            num_heads=num_heads,
            num_kv_heads=int(get(f"{arch}.attention.head_count_kv", num_heads)),
            head_dim=int(head_dim or hidden // num_heads),
            rms_norm_eps=float(get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(get(f"{arch}.rope.freq_base", 10000.0)),
            rope_scaling=rope_scaling,
            max_position_embeddings=int(get(f"{arch}.context_length", 4096)),
            tie_word_embeddings="output.weight" not in tensor_names,
            attention_bias="blk.0.attn_q.bias" in tensor_names,
            attention_out_bias="blk.0.attn_output.bias" in tensor_names,
            mlp_bias="blk.0.ffn_up.bias" in tensor_names,
            sliding_window=int(window) if window else None,
            bos_token_id=get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=() if eos is None else (int(eos),),
        )
