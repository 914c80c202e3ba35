"""What an `Engine` call hands back, built from the core's per-step `ReqOutput`s.

- Non-streamed: `Collected` gathers one request's increments on the engine thread and wakes the caller
  once, when the request finishes; `Results` holds a call's requests in order. The meta info is the
  complete one (every output logprob), with `output_token_logprobs_length` as SGLang adds it.
- Streamed: `StreamChunks` makes SGLang's incremental chunks: the text and ids added since the last
  chunk, and only this chunk's entries of the `STREAM_SLICED_KEYS` (output logprobs, output top
  logprobs), with `output_token_logprobs_length` the number sent so far in all (so a client can tell
  an incremental stream from a cumulative one). Input logprobs are in every chunk, as in SGLang.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loomlm.runtime.request import ReqOutput

# Output-side meta keys a streamed chunk carries only for its own tokens (SGLang's incremental streaming
# keys); `output_token_logprobs_length` then says how many output logprobs were sent so far in all.
STREAM_SLICED_KEYS = ("output_token_logprobs", "output_top_logprobs")


def member_rid(rid: str | None, i: int, total: int) -> str | None:
    """The id of request `i` of `total` made by one call named `rid`: the name itself for a single
    request, `rid-i` for several (None: the engine picks)."""
    return None if rid is None else (rid if total == 1 else f"{rid}-{i}")


def with_logprob_length(meta: dict[str, Any]) -> dict[str, Any]:
    if "output_token_logprobs" in meta:
        meta = {**meta, "output_token_logprobs_length": len(meta["output_token_logprobs"])}
    return meta


@dataclass
class Collected:
    """Accumulates the increments of one non-streamed request. `add` runs on the engine thread (no
    wake-up of the caller per token: at batch 64 those hand-offs cost more than the decode step's
    bookkeeping); the caller is signalled once, when the request finishes."""

    parts: list[str] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    meta_info: dict[str, Any] = field(default_factory=dict)
    finished: bool = False

    def sink(self, on_finished: Callable[[], None]) -> Callable[[ReqOutput], None]:
        def deliver(out: ReqOutput) -> None:
            self.parts.append(out.text_delta)
            self.output_ids += out.new_token_ids
            self.meta_info = out.meta_info
            if out.finished:
                self.finished = True
                on_finished()

        return deliver

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": "".join(self.parts),
            "output_ids": self.output_ids,
            "meta_info": with_logprob_length(self.meta_info),
        }


@dataclass
class Results:
    """The collected requests of one non-streamed call, in request order."""

    single: bool
    items: list[Collected] = field(default_factory=list)

    def sinks(self, wake: Callable[[int], None]) -> Callable[[int], Callable[[ReqOutput], None]]:
        """A sink factory for `_expand`: request `i` calls `wake(i)` once, when it finishes."""

        def make_sink(i: int) -> Callable[[ReqOutput], None]:
            self.items.append(Collected())
            return self.items[-1].sink(lambda: wake(i))

        return make_sink

    @property
    def finished(self) -> bool:
        return all(item.finished for item in self.items)

    def value(self) -> dict[str, Any] | list[dict[str, Any]]:
        dicts = [item.as_dict() for item in self.items]
        return dicts[0] if self.single and len(dicts) == 1 else dicts


@dataclass
class StreamChunks:
    """Turns one streamed request's outputs into chunks (see the module docstring)."""

    sent: int = 0  # output logprobs already sent
    finished: bool = False

    def chunk(self, out: ReqOutput) -> dict[str, Any]:
        self.finished = out.finished
        meta = out.meta_info
        if "output_token_logprobs" in meta:
            total = len(meta["output_token_logprobs"])
            meta = {
                **meta,
                **{k: meta[k][self.sent :] for k in STREAM_SLICED_KEYS if k in meta},
                "output_token_logprobs_length": total,
            }
            self.sent = total
        return {"text": out.text_delta, "output_ids": out.new_token_ids, "meta_info": meta, "finished": out.finished}
