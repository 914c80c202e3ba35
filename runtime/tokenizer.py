"""Tokenizer loading through `transformers.AutoTokenizer` (HF directories and GGUF files alike).

For a .gguf file transformers rebuilds the tokenizer and chat template from the file's metadata, which
takes seconds; engines in one process on the same tokenizer files share one tokenizer object while any
of them holds it (weak references, as for the weights in `models/shared_weights.py`). Engines only read
it: encode, decode and the chat template.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from loomlm.runtime.models.loader import resolve_model_path
from loomlm.runtime.models.shared_weights import file_stamp

_live: weakref.WeakValueDictionary[tuple[str, Any], Any] = weakref.WeakValueDictionary()
_lock = threading.Lock()


def load_tokenizer(model_path: str | None, tokenizer_path: str | None = None) -> Any:
    """Tokenizer for `model_path` (None -> the default model), or from `tokenizer_path` if given.

    Returns a `transformers.PreTrainedTokenizerBase`.
    """
    path = resolve_model_path(tokenizer_path if tokenizer_path is not None else model_path)
    key = (os.path.realpath(path), file_stamp(path))
    with _lock:
        tokenizer = _live.get(key)
        if tokenizer is None:
            tokenizer = _read_tokenizer(path)
            _live[key] = tokenizer
    return tokenizer


def _read_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    if os.path.isfile(path):  # resolve_model_path only lets .gguf files through
        return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)
