"""Pure-torch references of the Triton kernels: the CPU path's definitions and the kernels' test oracle.

Each function states the exact arithmetic its kernel must reproduce (dtype of the accumulation, order of
casts), so a float32 kernel matches it to rounding.
"""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x, residual: [T, H]; weight: [H]. With a residual, x + residual (in x's dtype) is normalised and
    also returned as the new residual. Normalised in float32, cast back to x's dtype, then scaled by
    weight (the HF Llama order)."""
    if residual is not None:
        x = x + residual
    normed = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed, (x if residual is not None else None)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] = [gate | up] -> [T, I] = silu(gate) * up, computed in float32, cast to x's dtype."""
    gate, up = x.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """In place: logits[rows[i], t] = -inf where bit (t % 32) of bitmask[i, t // 32] is 0.
    logits: [B, V] float; bitmask: [N, ceil(V / 32)] int32 (packed, little-endian bits); rows: [N] int64
    (None: row i of the bitmask is row i of the logits)."""
    n, width = bitmask.shape
    vocab = logits.shape[1]
    bits = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().view(n, width * 32)[:, :vocab]
    target = torch.arange(n, device=logits.device) if rows is None else rows
    logits[target] = logits[target].masked_fill(~allowed, float("-inf"))
    return logits


def apply_rope_(
    x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False
) -> torch.Tensor:
    """In place RoPE. x: [T, heads, D] (any row/head strides, last dimension contiguous), positions: [T]
    int64, cos/sin: [max_positions, D/2] float32 tables. Rotate-half form (HF Llama) pairs element i with
    i + D/2; the interleaved form pairs 2i with 2i+1. Computed in float32, stored in x's dtype."""
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)  # [T, 1, D/2]
    xf = x.float()
    if interleaved:
        a, b = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)
    else:
        a, b = xf.chunk(2, dim=-1)
        out = torch.cat((a * c - b * s, b * c + a * s), dim=-1)
    x.copy_(out.to(x.dtype))
    return x


def store_kv_(
    k_buffer: torch.Tensor, v_buffer: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor
) -> None:
    """Scatter new keys and values into their pool slots: buffer[slots[t]] = k[t] (buffers: [S, KVH, D])."""
    k_buffer[slots] = k.to(k_buffer.dtype)
    v_buffer[slots] = v.to(v_buffer.dtype)


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per request over its cached keys. q: [B, H, D]; k/v_buffer: [S, KVH, D];
    req_to_token: [R, max_len] slot table; req_rows: [B] (row of each request); seq_lens: [B] (>= 1).
    Query head h reads KV head h // (H / KVH). Softmax and sums in float32; output [B, H, D] in q's dtype."""
    batch, heads, _ = q.shape
    group = heads // k_buffer.shape[1]
    out = torch.empty_like(q)
    for i in range(batch):
        slots = req_to_token[req_rows[i], : int(seq_lens[i])]
        k = k_buffer[slots].float().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v_buffer[slots].float().repeat_interleave(group, dim=1)
        probs = torch.softmax(torch.einsum("hd,lhd->hl", q[i].float(), k) * scale, dim=-1)
        out[i] = torch.einsum("hl,lhd->hd", probs, v).to(q.dtype)
    return out


def extend_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    extend_starts: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Prefill / extend: the new tokens of B requests over their cached prefix and themselves.
    q: [T, H, D], the new tokens of all requests back to back; request b's are rows
    extend_starts[b] .. extend_starts[b] + extend_lens[b]. Its whole sequence (prefix + new tokens, whose
    K/V are already stored) is at slots req_to_token[req_rows[b], : prefix_lens[b] + extend_lens[b]] of
    k/v_buffer [S, KVH, D]. New token e sits at position prefix_lens[b] + e and sees keys 0 .. that
    position. Query head h reads KV head h // (H / KVH). Softmax and sums in float32; output [T, H, D] in
    q's dtype."""
    heads = q.shape[1]
    group = heads // k_buffer.shape[1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for i in range(req_rows.shape[0]):
        prefix, extend, start = int(prefix_lens[i]), int(extend_lens[i]), int(extend_starts[i])
        slots = req_to_token[req_rows[i], : prefix + extend]
        k = k_buffer[slots].float().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v_buffer[slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,lhd->htl", q[start : start + extend].float(), k) * scale
        keys = torch.arange(prefix + extend, device=q.device)
        allowed = keys[None, :] <= prefix + torch.arange(extend, device=q.device)[:, None]  # [E, L]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out[start : start + extend] = torch.einsum("htl,lhd->thd", probs, v).to(q.dtype)
    return out
