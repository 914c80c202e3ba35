"""Incremental detokenisation and stop-string matching for streamed output.

`IncrementalDetokenizer` turns output token ids into text increments. It decodes only a small window
of recent ids: `prefix_offset` marks where the window starts (the last point already turned into text)
and `read_offset` the end of the text already emitted. A step decodes ids[prefix_offset:read_offset]
and ids[prefix_offset:]; the difference is new text. When that text ends in U+FFFD, a character is
split over byte-level BPE tokens: the text before it is released, the U+FFFD run is held back and
the offsets stay put until a later token completes the character (`flush()` releases it as is). The
concatenation of all increments (plus `flush()`) equals `tokenizer.decode(output_ids)` for byte-level
tokenizers. `prompt_ids_tail` (the last few prompt ids) seeds the window so that tokenizers whose
decoding depends on the left context (SentencePiece leading spaces) decode the first output right;
that context itself is never emitted.

`StopStringMatcher` scans those increments for stop strings. Text that could still be the beginning
of a stop string is held back until disambiguated, so a stop spanning several increments is found and
neither the stop nor anything after it is ever emitted. With several stops, the one that starts
earliest in the full text wins (the shortest one on a tie), exactly as `min(text.find(s))` would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

_REPLACEMENT = "\ufffd"


def _fast_decoder(tokenizer: Any) -> Any:
    """The `decode(ids, skip_special_tokens=)` to call per token. A transformers fast tokenizer without
    space clean-up decodes exactly as its Rust `tokenizers.Tokenizer` does, and calling that directly
    skips transformers' per-call argument conversion (about 8x the decode itself: at batch 64 it was
    most of a decode step's host time)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return backend.decode
    return tokenizer.decode


class IncrementalDetokenizer:
    """Per-request streaming decoder: `add(ids) -> new text`, `flush() -> held text` at the end."""

    def __init__(self, tokenizer: Any, prompt_ids_tail: Sequence[int] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._decode_ids = _fast_decoder(tokenizer)
        self._ids: list[int] = [int(i) for i in prompt_ids_tail]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._num_context = len(self._ids)
        self._sent = 0  # characters past decode(ids[prefix_offset:read_offset]) already returned

    @property
    def output_ids(self) -> list[int]:
        return self._ids[self._num_context :]

    def _decode(self, ids: list[int]) -> str:
        return self._decode_ids(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids: int | Iterable[int]) -> str:
        """Append one or more output ids; return the text they completed (possibly '')."""
        if isinstance(token_ids, int) or getattr(token_ids, "ndim", None) == 0:  # numpy / 0-d tensor too
            self._ids.append(int(token_ids))  # type: ignore[arg-type]
        else:
            self._ids.extend(int(i) for i in token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return text still held back (e.g. a trailing incomplete character, as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        start = len(prefix_text) + self._sent
        if full_text.endswith(_REPLACEMENT) and not final:
            # A character split over tokens: release what precedes it (those characters are final
            # whatever bytes come next), keep the window until its remaining bytes arrive.
            new_text = full_text.rstrip(_REPLACEMENT)[start:]
            self._sent += len(new_text)
            return new_text
        if len(full_text) <= len(prefix_text) and not final:
            return ""  # e.g. a skipped special token: nothing new yet, keep the window
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._sent = 0
        return full_text[start:]


class StopStringMatcher:
    """Streams text through, cutting it before the first occurrence of any stop string."""

    def __init__(self, stops: Sequence[str]):
        if any(not s for s in stops):
            raise ValueError(f"stop strings must be non-empty, got {tuple(stops)!r}")
        self.stops = tuple(stops)
        self.matched: str | None = None
        self._held = ""

    @property
    def finished(self) -> bool:
        return self.matched is not None

    def feed(self, text: str) -> tuple[str, str | None]:
        """Add an increment; return (text safe to emit now, the stop string matched or None).

        After a match every later call returns ("", None); the caller should stop the request.
        """
        if self.matched is not None:
            return "", None
        if not self.stops:
            return text, None
        buf = self._held + text
        best = self._first_match(buf)
        # A stop that started earlier but is still incomplete would win over `best`: wait for it
        # (holding from there also holds `best`, which starts later).
        hold_from = self._partial_start(buf)
        if best is not None and hold_from >= best[0]:
            return self._finish(buf, best)
        self._held = buf[hold_from:]
        return buf[:hold_from], None

    def flush(self) -> str:
        """End of stream: release held text, cut at a stop it holds (then `matched` is set)."""
        if self.matched is not None:
            return ""
        held, self._held = self._held, ""
        best = self._first_match(held)  # nothing can complete any more: the earliest match wins
        return held if best is None else self._finish(held, best)[0]

    def _finish(self, buf: str, match: tuple[int, int, str]) -> tuple[str, str]:
        self.matched = match[2]
        self._held = ""
        return buf[: match[0]], match[2]

    def _first_match(self, buf: str) -> tuple[int, int, str] | None:
        """(start, length, stop) of the earliest complete stop in buf, shortest on a tie."""
        best: tuple[int, int, str] | None = None
        for stop in self.stops:
            at = buf.find(stop)
            if at >= 0 and (best is None or (at, len(stop)) < best[:2]):
                best = (at, len(stop), stop)
        return best

    def _partial_start(self, buf: str) -> int:
        """Smallest i such that buf[i:] is a proper prefix of some stop (len(buf) if none)."""
        start = len(buf)
        for stop in self.stops:
            # Longest suffix of buf that is a proper prefix of stop; longer suffix = earlier start.
            for k in range(min(len(stop) - 1, len(buf)), 0, -1):
                if len(buf) - k >= start:
                    break
                if buf.endswith(stop[:k]):
                    start = len(buf) - k
                    break
        return start
