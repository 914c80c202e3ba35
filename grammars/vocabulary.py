"""`Vocabulary`: each token id's raw bytes, the EOS ids, and a fingerprint for caching compiles.

Constraints are checked on bytes, never on `decode([id])`: a byte-level BPE token may hold half of a
UTF-8 character, and SentencePiece decoding drops a token's leading space. Three token spellings are
read:
- byte-level BPE (GPT-2 family, SmolLM, Llama 3, Qwen): each of the 256 bytes is drawn as a printable
  character (`bytes_to_unicode`), so the token string maps back to bytes one character at a time;
- SentencePiece: `▁` stands for a space and `<0xNN>` tokens are byte fallbacks;
- added tokens that are not special are their literal UTF-8 text.
Special tokens (BOS, EOS, chat markers) get no bytes: no constraint ever allows them as text, and EOS
is allowed separately, exactly in accepting states.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPIECE_SPACE = "\u2581"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_UNICODE_TO_BYTE = {ch: b for b, ch in _bytes_to_unicode().items()}


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """token_bytes[i] = raw bytes of token i (b"" for special and unused ids); `size` = the model's
    logits width, which may exceed the tokenizer's length (padded embeddings)."""

    token_bytes: tuple[bytes, ...]
    eos_token_ids: frozenset[int]
    fingerprint: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)  # derived tables (token trie)

    def __post_init__(self) -> None:
        for i in self.eos_token_ids:
            if not 0 <= i < len(self.token_bytes):
                raise ValueError(f"EOS token id {i} is outside the vocabulary of {len(self.token_bytes)}")
        if not self.fingerprint:
            h = hashlib.sha256()
            h.update(repr(sorted(self.eos_token_ids)).encode())
            for b in self.token_bytes:
                h.update(len(b).to_bytes(4, "little"))
                h.update(b)
            object.__setattr__(self, "fingerprint", h.hexdigest()[:16])

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    @classmethod
    def from_dict(
        cls, tokens: Mapping[int, bytes | str], eos_token_ids: Iterable[int] = (), size: int | None = None
    ) -> Vocabulary:
        """Tiny vocabularies for tests: {id: bytes or str (UTF-8 encoded)}; missing ids get no bytes."""
        n = max(tokens, default=-1) + 1 if size is None else size
        out = [b""] * n
        for i, tok in tokens.items():
            out[i] = tok.encode("utf-8") if isinstance(tok, str) else bytes(tok)
        return cls(tuple(out), frozenset(eos_token_ids))

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, eos_token_ids: Iterable[int] | None = None, size: int | None = None
    ) -> Vocabulary:
        """From a `transformers` tokenizer. `eos_token_ids` defaults to the tokenizer's EOS; `size` to
        its length (pass the model's vocab size when the embedding is padded)."""
        vocab: dict[str, int] = tokenizer.get_vocab()
        n = max(max(vocab.values()) + 1, len(tokenizer)) if size is None else size
        special: set[int] = set(getattr(tokenizer, "all_special_ids", []))
        literal: dict[int, str] = {}
        for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if getattr(added, "special", False):
                special.add(int(i))
            else:
                literal[int(i)] = str(added)
        byte_level = _is_byte_level(tokenizer, vocab)
        out = [b""] * n
        for tok, i in vocab.items():
            if i >= n or i in special:
                continue
            out[i] = literal[i].encode("utf-8") if i in literal else _token_bytes(tok, byte_level)
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_token_ids = [] if eos is None else [eos]
        return cls(tuple(out), frozenset(int(i) for i in eos_token_ids if 0 <= int(i) < n))

    def decode_bytes(self, token_ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes[i] for i in token_ids)


def _is_byte_level(tokenizer: Any, vocab: Mapping[str, int]) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        text = repr(decoder)
        if "ByteLevel" in text:
            return True
        if "ByteFallback" in text or "Metaspace" in text or _SPIECE_SPACE in text:
            return False
    # No decoder to ask: byte-level vocabularies spell every token with the 256 mapped characters.
    sample = list(vocab)[:2000]
    return all(all(ch in _UNICODE_TO_BYTE for ch in tok) for tok in sample)


def _token_bytes(tok: str, byte_level: bool) -> bytes:
    if byte_level:
        try:
            return bytes(_UNICODE_TO_BYTE[ch] for ch in tok)
        except KeyError:  # a token outside the byte alphabet: take it as text
            return tok.encode("utf-8")
    m = _BYTE_FALLBACK.fullmatch(tok)
    if m:
        return bytes([int(m.group(1), 16)])
    return tok.replace(_SPIECE_SPACE, " ").encode("utf-8")
