"""Tokenizer loading through `transformers.AutoTokenizer` (HF directories and GGUF files alike).

For a .gguf file transformers rebuilds the tokenizer and chat template from the file's metadata.
"""

from __future__ import annotations

import os
from typing import Any

from loomlm.runtime.models.loader import resolve_model_path


def load_tokenizer(model_path: str | None, tokenizer_path: str | None = None) -> Any:
    """Tokenizer for `model_path` (None -> the default model), or from `tokenizer_path` if given.

    Returns a `transformers.PreTrainedTokenizerBase`.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(tokenizer_path if tokenizer_path is not None else model_path)
    if os.path.isfile(path):  # resolve_model_path only lets .gguf files through
        return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)
