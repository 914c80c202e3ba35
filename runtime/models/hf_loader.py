"""Read a Hugging Face model directory: config.json plus safetensors weights (single or sharded).

Only `safetensors` is read (memory-mapped, one tensor at a time); pickle checkpoints are refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch

from loomlm.runtime.models.config import ModelConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_hf_config(model_dir: str) -> ModelConfig:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"model directory {model_dir!r} has no config.json")
    with open(path, encoding="utf-8") as f:
        return ModelConfig.from_hf_dict(json.load(f))


def safetensors_files(model_dir: str) -> list[str]:
    """The weight files of a directory: the shards named by the index, or the single file."""
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_dir, s) for s in shards]
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"{index} names missing shard files: {missing}")
        return files
    single = os.path.join(model_dir, SINGLE_FILE)
    if os.path.isfile(single):
        return [single]
    others = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    if others:
        return [os.path.join(model_dir, n) for n in others]
    raise ValueError(
        f"model directory {model_dir!r} has no safetensors weights "
        f"({SINGLE_FILE} or {INDEX_FILE}); pickle checkpoints (.bin, .pt) are not loaded"
    )


def has_safetensors(model_dir: str) -> bool:
    return any(n.endswith(".safetensors") or n == INDEX_FILE for n in os.listdir(model_dir))


def iter_safetensors_weights(model_dir: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every tensor of every weight file, in the checkpoint's dtype."""
    from safetensors import safe_open

    for path in safetensors_files(model_dir):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
