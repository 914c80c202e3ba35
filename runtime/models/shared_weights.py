"""One copy of a checkpoint per process: models loaded from the same file share their weight tensors.

Reading the default model takes seconds (GGUF metadata, dequantization). A second model on the same
checkpoint, shape, dtype and device (the cache-on / cache-off engines of a benchmark, several `Runtime`s,
a test's engines) takes the parameter tensors of one already loaded instead of reading and holding a
second copy. Entries are weak: a checkpoint stays shared only while a model built from it is alive, so
nothing is kept after the last engine on it goes. Inference never writes to a parameter, which is what
makes sharing safe; each model keeps its own modules, ops and RoPE tables.

A checkpoint is recognised by its resolved path, the size and modification time of its files (a file
rewritten in place is read again) and the config overrides asked for, before any of it is parsed.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass

import torch

from loomlm.runtime.models.config import ModelConfig
from loomlm.runtime.models.llama import LlamaForCausalLM


def file_stamp(path: str) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of a file, or of each file directly inside a directory."""
    if os.path.isfile(path):
        st = os.stat(path)
        return (("", st.st_size, st.st_mtime_ns),)
    stamps = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file():
            st = entry.stat()
            stamps.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


@dataclass(frozen=True)
class WeightsKey:
    path: str
    stamp: tuple[tuple[str, int, int], ...]
    load_format: str
    overrides: str  # repr of the config override (a dict or a whole ModelConfig), "" for none
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, path: str, load_format: str, overrides: object, dtype: torch.dtype, device: torch.device) -> WeightsKey:
        text = repr(sorted(overrides.items())) if isinstance(overrides, dict) else repr(overrides or "")
        return cls(os.path.realpath(path), file_stamp(path), load_format, text, dtype, device)


class SharedWeights:
    """A loaded model's config, parameters (by state-dict name) and RoPE frequencies; every model built
    from them holds a reference, so the entry lives while one of them does."""

    def __init__(self, config: ModelConfig, params: dict[str, torch.Tensor], inv_freq: torch.Tensor):
        self.config = config
        self.params = params
        self.inv_freq = inv_freq


_live: weakref.WeakValueDictionary[WeightsKey, SharedWeights] = weakref.WeakValueDictionary()
_lock = threading.Lock()  # one load per key at a time: a concurrent second engine waits, then shares


def loading_lock() -> threading.Lock:
    return _lock


def reuse(key: WeightsKey) -> tuple[LlamaForCausalLM, ModelConfig] | None:
    """A new model over the live weights of `key` and its config, or None when no model holds them now."""
    shared = _live.get(key)
    if shared is None:
        return None
    with torch.device("meta"):
        model = LlamaForCausalLM(shared.config, dtype=key.dtype)
    # assign=True: the new model's parameters are the shared tensors themselves, not copies.
    model.load_state_dict(shared.params, strict=True, assign=True)
    model.rotary.build(shared.inv_freq, key.device)
    model.shared_weights = shared
    return model.eval(), shared.config


def remember(key: WeightsKey, model: LlamaForCausalLM, config: ModelConfig, inv_freq: torch.Tensor) -> None:
    """Offer a freshly loaded model's weights to later loads of the same checkpoint."""
    shared = SharedWeights(config, dict(model.state_dict()), inv_freq)
    model.shared_weights = shared
    _live[key] = shared


def live_checkpoints() -> int:
    """How many checkpoints are shared now (for tests)."""
    return len(_live)
