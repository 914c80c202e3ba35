"""EngineConfig: the one frozen set of engine/server arguments (SGLang's server-argument names)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOAD_FORMATS = ("auto", "gguf", "safetensors", "dummy")
ATTENTION_BACKENDS = ("torch", "cpu", "triton")
SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight")
CPU_LINEAR_BACKENDS = ("auto", "torch", "onednn")  # see runtime/models/cpu_linear.py
# NGRAM: prompt-lookup drafting (runtime/speculative.py); STANDALONE: a small draft model (runtime/draft_model.py).
SPECULATIVE_ALGORITHMS = ("NGRAM", "STANDALONE")
# Weight-only, bfloat16 activations, CPU: int8 per row (runtime/models/int8_linear.py), int4 in groups of
# 32 (runtime/models/int4_linear.py).
QUANTIZATIONS = ("int8", "int4")


JSON_WHITESPACE = ("default", "compact", "flexible")


@dataclass(frozen=True)
class EngineConfig:
    model_path: str | None = None  # None = the default model (SmolLM2-135M-Instruct GGUF)
    tokenizer_path: str | None = None  # None = the model's own tokenizer
    dtype: str = "auto"  # auto: bfloat16 on CUDA; on CPU measured once per process (runtime/models/cpu_dtype.py)
    load_format: str = "auto"
    context_length: int | None = None  # None = the model's max positions
    max_total_tokens: int | None = None  # KV pool size in tokens; None = from mem_fraction_static
    mem_fraction_static: float | None = None  # share of free memory for the KV pool (CPU 0.25, CUDA 0.85)
    max_running_requests: int = 128
    max_prefill_tokens: int = 8192  # new tokens per extend step (a longer prompt runs alone)
    chunked_prefill_size: int = 2048  # prompts longer than this are prefilled in chunks; -1 = never chunk
    enable_mixed_chunk: bool = False  # an extend step also runs the running requests' decodes (SGLang's name)
    mixed_prefill_tokens: int = 512  # with enable_mixed_chunk: prompt tokens of a step that carries decodes
    schedule_policy: str = "lpm"  # fcfs | lpm (longest prefix match) | dfs-weight (tree order)
    disable_radix_cache: bool = False  # no prefix reuse at all (for comparison)
    disable_jump_forward: bool = False  # constrained outputs: sample forced text token by token
    grammar_max_states: int = 50_000  # largest automaton a regex / JSON schema may compile to
    grammar_timeout_s: float = 10.0  # compile-time budget of one grammar
    grammar_max_parser_items: int = 20_000  # Earley items of one parser step (grammar engine, while decoding)
    grammar_max_mask_fuel: int = 2_000_000  # work units of one token mask (grammar engine, while decoding)
    grammar_cache_size: int = 128  # compiled grammars kept (LRU)
    json_whitespace: str = "default"  # JSON-schema whitespace: default | compact | flexible
    attention_backend: str | None = None  # torch | cpu | triton; None = triton on CUDA, cpu on CPU (torch if unbuilt)
    disable_cuda_graph: bool = False  # CUDA: run decode eagerly instead of replaying captured graphs
    cuda_graph_max_bs: int = 256  # largest decode batch captured (bigger batches run eagerly)
    json_model_override_args: str | None = None  # JSON object of model-config fields to override
    random_seed: int = 0  # seeds dummy weights and unseeded requests
    device: str = "auto"  # auto: cuda when available, else cpu
    cpu_threads: int | None = None  # torch intra-op threads on CPU; None = leave torch's default
    cpu_linear: str = "auto"  # CPU linear layers: auto (timed once per process) | torch | onednn (packed weights)
    quantization: str | None = None  # int8 | int4: weight-only linear layers (CPU, bfloat16 activations)
    tp_size: int = 1  # tensor parallel ranks (processes; gloo on CPU, NCCL on CUDA); see runtime/distributed/
    tp_timeout_s: float = 300.0  # a tensor-parallel collective waiting longer than this fails the step
    speculative_algorithm: str | None = None  # NGRAM (own context) | STANDALONE (draft model); one verify pass
    speculative_draft_model_path: str | None = None  # STANDALONE: the draft model (same tokenizer as the target)
    speculative_num_draft_tokens: int = 4  # most draft tokens per request and step (adapted to acceptance)
    speculative_ngram_min_match_window_size: int = 2  # shortest suffix matched in the context to draft
    speculative_ngram_max_match_window_size: int = 4  # longest suffix tried first

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.attention_backend is not None and self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        if not isinstance(self.tp_size, int) or isinstance(self.tp_size, bool) or self.tp_size < 1:
            raise ValueError(f"tp_size must be a positive integer, got {self.tp_size!r}")
        if (
            isinstance(self.tp_timeout_s, bool)
            or not isinstance(self.tp_timeout_s, (int, float))
            or self.tp_timeout_s <= 0
        ):
            raise ValueError(f"tp_timeout_s must be > 0, got {self.tp_timeout_s!r}")
        for name in ("context_length", "max_total_tokens", "cpu_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS} or None, got {self.quantization!r}")
        if self.quantization is not None and self.dtype not in ("auto", "bfloat16"):
            raise ValueError(
                f"quantization {self.quantization!r} runs with bfloat16 activations: dtype must be auto or bfloat16, "
                f"got {self.dtype!r}"
            )
        if self.cpu_linear not in CPU_LINEAR_BACKENDS:
            raise ValueError(f"cpu_linear must be one of {CPU_LINEAR_BACKENDS}, got {self.cpu_linear!r}")
        if self.schedule_policy not in SCHEDULE_POLICIES:
            raise ValueError(f"schedule_policy must be one of {SCHEDULE_POLICIES}, got {self.schedule_policy!r}")
        for name in ("disable_radix_cache", "disable_jump_forward", "disable_cuda_graph", "enable_mixed_chunk"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in (
            "grammar_max_states",
            "grammar_cache_size",
            "cuda_graph_max_bs",
            "grammar_max_parser_items",
            "grammar_max_mask_fuel",
            "speculative_num_draft_tokens",
            "speculative_ngram_min_match_window_size",
            "speculative_ngram_max_match_window_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._check_speculative()
        if (
            isinstance(self.grammar_timeout_s, bool)
            or not isinstance(self.grammar_timeout_s, (int, float))
            or not self.grammar_timeout_s > 0
        ):
            raise ValueError(f"grammar_timeout_s must be > 0, got {self.grammar_timeout_s!r}")
        if self.json_whitespace not in JSON_WHITESPACE:
            raise ValueError(f"json_whitespace must be one of {JSON_WHITESPACE}, got {self.json_whitespace!r}")
        chunk = self.chunked_prefill_size
        if not isinstance(chunk, int) or isinstance(chunk, bool) or (chunk <= 0 and chunk != -1):
            raise ValueError(f"chunked_prefill_size must be a positive integer or -1 (off), got {chunk!r}")
        for name in ("max_running_requests", "max_prefill_tokens", "mixed_prefill_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.mem_fraction_static is not None and not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static!r}")
        if self.json_model_override_args is not None:
            try:
                overrides = json.loads(self.json_model_override_args)
            except (TypeError, json.JSONDecodeError) as exc:
                raise ValueError(f"json_model_override_args is not valid JSON: {exc}") from None
            if not isinstance(overrides, dict):
                raise ValueError(
                    "json_model_override_args must be a JSON object of model-config fields, "
                    f"got {self.json_model_override_args!r}"
                )
        if not isinstance(self.random_seed, int):
            raise ValueError(f"random_seed must be an integer, got {self.random_seed!r}")

    def _check_speculative(self) -> None:
        algo = self.speculative_algorithm
        if algo is not None and algo not in SPECULATIVE_ALGORITHMS:
            raise ValueError(f"speculative_algorithm must be one of {SPECULATIVE_ALGORITHMS} or None, got {algo!r}")
        if algo == "STANDALONE" and not self.speculative_draft_model_path:
            raise ValueError("speculative_algorithm 'STANDALONE' needs speculative_draft_model_path (the draft model)")
        if self.speculative_draft_model_path and algo != "STANDALONE":
            raise ValueError("speculative_draft_model_path is only read with speculative_algorithm 'STANDALONE'")
        if self.speculative_ngram_min_match_window_size > self.speculative_ngram_max_match_window_size:
            raise ValueError(
                "speculative_ngram_min_match_window_size "
                f"({self.speculative_ngram_min_match_window_size}) exceeds "
                f"speculative_ngram_max_match_window_size ({self.speculative_ngram_max_match_window_size})"
            )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown engine argument(s): {', '.join(unknown)}")
        return cls(**kwargs)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto" and self.quantization is not None:
            return torch.bfloat16
        if self.dtype == "auto":  # on CPU the model runner measures; float32 is the fixed fallback
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    def prefill_token_budget(self) -> int:
        """New tokens one extend step may hold."""
        if self.chunked_prefill_size == -1:
            return self.max_prefill_tokens
        return min(self.max_prefill_tokens, self.chunked_prefill_size)

    def resolved_attention_backend(self) -> str:
        if self.attention_backend is not None:
            return self.attention_backend
        return "triton" if self.resolved_device().type == "cuda" else "cpu"

    def model_overrides(self) -> dict[str, Any]:
        """`json_model_override_args` parsed (validated in __post_init__); {} when not given."""
        return json.loads(self.json_model_override_args) if self.json_model_override_args else {}

    def kv_pool_budget_bytes(self, device: torch.device) -> int:
        """Bytes the KV pool may take when max_total_tokens is not given."""
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            return int(free * (self.mem_fraction_static or 0.85))
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(available * (self.mem_fraction_static or 0.25))
