"""Read a GGUF file (llama.cpp format) as Hugging Face-named float32 tensors.

Tensors are dequantized with `gguf.quants.dequantize`. llama.cpp stores the q/k projection rows of
`llama`-architecture models permuted for its interleaved RoPE; we undo that so the rows match the
rotate-half convention our model (and Hugging Face) uses. Qwen2 GGUFs use rotate-half already.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import torch

from loomlm.runtime.models.config import ModelConfig

# GGUF tensor name inside a block -> Hugging Face module path inside `model.layers.{i}`.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1 GGUFs: per-dimension divisors of the RoPE frequencies


def open_gguf(path: str):  # -> gguf.GGUFReader
    import gguf

    return gguf.GGUFReader(path, "r")


def hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m is None or m.group(2) not in _BLOCK_NAMES:
        raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")
    return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's q/k permutation. Per head, llama.cpp interleaves the two rotary halves
    (rows [0, D/2, 1, D/2+1, ...]); we restore [first half, second half]. w: [n_heads * D, ...]."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def dequantize(tensor) -> torch.Tensor:  # tensor: gguf.ReaderTensor
    """float32 torch tensor in PyTorch layout ([out, in] for matrices)."""
    from gguf.quants import dequantize as gguf_dequantize

    arr = gguf_dequantize(tensor.data, tensor.tensor_type)
    if not arr.flags.writeable:  # F32/F16 views of the read-only memory map
        arr = np.array(arr)
    return torch.from_numpy(arr.astype(np.float32, copy=False))


def iter_gguf_weights(reader, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (Hugging Face name, float32 tensor) for every weight except `rope_freqs`."""
    permute = config.architecture == "llama"
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            continue
        name = hf_name(tensor.name)
        w = dequantize(tensor)
        if permute and ".q_proj." in name:
            w = unpermute_rope_rows(w, config.num_heads)
        elif permute and ".k_proj." in name:
            w = unpermute_rope_rows(w, config.num_kv_heads)
        yield name, w


Q4_1_BLOCK = 32  # values per block: float16 d and m, then 16 bytes of 4-bit codes
_Q4_1_BYTES = 4 + Q4_1_BLOCK // 2


def q4_1_codes(tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # tensor: gguf.ReaderTensor
    """A Q4_1 tensor's own codes, no float weights made: (codes [out, in] uint8 in 0..15, d and m
    [out, in / 32] float32), w = d * q + m. In a block, byte j holds value j (low nibble) and value j + 16
    (high nibble)."""
    raw = np.asarray(tensor.data, dtype=np.uint8)
    rows = raw.shape[0]
    blocks = raw.reshape(-1, _Q4_1_BYTES)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32).reshape(rows, -1)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(rows, -1)
    packed = blocks[:, 4:]
    codes = np.concatenate([packed & 15, packed >> 4], axis=1).reshape(rows, -1)
    return torch.from_numpy(codes), torch.from_numpy(d), torch.from_numpy(m)


def iter_q4_1_codes(reader, config: ModelConfig) -> Iterator[tuple[str, tuple[torch.Tensor, ...]]]:
    """(Hugging Face name, (codes, d, m)) for every Q4_1 tensor, q/k rows unpermuted as the weights are."""
    import gguf

    permute = config.architecture == "llama"
    for tensor in reader.tensors:
        if tensor.tensor_type != gguf.GGMLQuantizationType.Q4_1 or tensor.name == ROPE_FREQS:
            continue
        name = hf_name(tensor.name)
        parts = q4_1_codes(tensor)
        if permute and ".q_proj." in name:
            parts = tuple(unpermute_rope_rows(p, config.num_heads) for p in parts)
        elif permute and ".k_proj." in name:
            parts = tuple(unpermute_rope_rows(p, config.num_kv_heads) for p in parts)
        yield name, parts


def rope_freq_factors(reader) -> torch.Tensor | None:
    """[head_dim // 2] divisors of the RoPE frequencies if the file carries them, else None."""
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            return dequantize(tensor).reshape(-1)
    return None
