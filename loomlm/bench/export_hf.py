"""`python -m loomlm.bench export-hf --out DIR`: the default model as a Hugging Face folder, for peers.

Peer servers and engines (vLLM's CPU build, SGLang) load Hugging Face folders, not the GGUF file that
loomlm serves by default. This writes the same weights, read from that GGUF by transformers, as
safetensors in `--dtype` (bf16 by default, as vLLM's CPU build runs), with the tokenizer and its chat
template, so a peer is measured on exactly the model loomlm runs. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loomlm.bench export-hf", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (created; existing files are replaced)")
    parser.add_argument("--model-path", default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loomlm.runtime.models.loader import default_model_path

    path = args.model_path or default_model_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    dtype = getattr(torch, args.dtype)
    read = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    # transformers marks a model read from GGUF as quantized and refuses to save it: the same weights
    # go into a plain model of the same config.
    config = read.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(read.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} ({args.dtype}, from {path})")
    return 0
