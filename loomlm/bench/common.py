"""Set-up shared by the benchmarks: the device and vocabulary of the model under test, torch threads."""

from __future__ import annotations

import argparse

import torch

from loomlm.runtime.config import EngineConfig


def resolve_target(args: argparse.Namespace) -> tuple[torch.device, int]:
    """(device, vocabulary size) for `args.device` and `args.model_path`; ValueError names a bad one."""
    from loomlm.runtime.models.loader import read_model_config, resolve_model_path

    config = EngineConfig(device=args.device, json_model_override_args=getattr(args, "json_model_override_args", None))
    vocab = config.model_overrides().get("vocab_size")
    return config.resolved_device(), vocab or read_model_config(resolve_model_path(args.model_path)).vocab_size


def use_threads(requested: int | None) -> int:
    """Fix torch's CPU thread count for the whole run (both sides of a comparison); returns it."""
    threads = requested or torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads
