"""Set-up shared by the benchmarks: the model arguments, the device and vocabulary of the model under test,
torch threads."""

from __future__ import annotations

import argparse

import torch

from loomlm.runtime.config import DTYPES, LOAD_FORMATS, EngineConfig

DEVICE_HELP = "auto | cpu | cuda[:N]"


def add_model_arguments(
    p: argparse.ArgumentParser,
    *,
    load_formats: tuple[str, ...] = LOAD_FORMATS,
    load_format_help: str | None = None,
    dtypes: tuple[str, ...] = tuple(DTYPES),
    dtype_default: str = "float32",
    dtype_help: str | None = None,
    device_help: str = DEVICE_HELP,
) -> None:
    """`--model`, `--load-format`, `--dtype` and `--device`: which model a benchmark runs, and where."""
    p.add_argument(
        "--model",
        dest="model_path",
        default=None,
        help="GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct)",
    )
    p.add_argument("--load-format", choices=load_formats, default="auto", help=load_format_help)
    p.add_argument("--dtype", choices=dtypes, default=dtype_default, help=dtype_help)
    p.add_argument("--device", default="auto", help=device_help)


def resolve_target(args: argparse.Namespace) -> tuple[torch.device, int]:
    """(device, vocabulary size) for `args.device` and `args.model_path`; ValueError names a bad one."""
    from loomlm.runtime.models.loader import read_model_config, resolve_model_path

    config = EngineConfig(device=args.device, json_model_override_args=getattr(args, "json_model_override_args", None))
    vocab = config.model_overrides().get("vocab_size")
    return config.resolved_device(), vocab or read_model_config(resolve_model_path(args.model_path)).vocab_size


def use_threads(requested: int | None) -> int:
    """The torch CPU thread count of the whole run (both sides of a comparison): engines get it as
    `cpu_threads`, in-process baselines call `torch.set_num_threads` once the engines are done.

    Not set here: on this (the main) thread `torch.set_num_threads` starts an OpenMP pool, and a second
    pool beside the engines' compute thread halves their speed (runtime/compute_thread.py)."""
    return requested or torch.get_num_threads()
