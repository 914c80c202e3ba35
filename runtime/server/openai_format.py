"""OpenAI response pieces built from the engine's outputs: ids, usage, finish reasons, logprobs."""

from __future__ import annotations

import time
import uuid
from typing import Any

from loomlm.runtime.server.errors import ApiError


def head(prefix: str, obj: str, model: str) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time()), "model": model}


def finish_reason(meta: dict[str, Any]) -> str | None:
    """OpenAI's finish reason of a finished output ("stop" or "length"); an abort (a grammar limit hit
    while decoding, the server shutting down) is an error for the caller."""
    reason = meta.get("finish_reason")
    if reason is None:
        return None
    if reason["type"] == "abort":
        raise ApiError(400, f"the request was aborted: {reason.get('message') or 'no reason given'}")
    return "length" if reason["type"] == "length" else "stop"


def usage(prompt_metas: list[dict[str, Any]], metas: list[dict[str, Any]]) -> dict[str, Any]:
    """Usage of a response: each prompt counted once (`prompt_metas`: the first choice of each prompt),
    every choice's completion tokens, and the prompt tokens served from the prefix cache."""
    prompt = sum(m["prompt_tokens"] for m in prompt_metas)
    completion = sum(m["completion_tokens"] for m in metas)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(m.get("cached_tokens", 0) for m in prompt_metas)},
    }


def _rows(meta: dict[str, Any], key: str, entries: list) -> list:
    return meta.get(key) or [[] for _ in entries]


def completion_logprobs(decode: Any, meta: dict[str, Any], prompt_text: str | None, start: int = 0) -> dict[str, Any]:
    """The legacy logprobs object of a completion: the prompt's tokens first when echoed (`prompt_text`
    given), text offsets counted in decoded characters from `start`."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    position = start

    def add(entries: list, rows: list) -> None:
        nonlocal position
        for (logprob, tid, *_), top in zip(entries, rows):
            tokens.append(decode([tid]))
            values.append(logprob)
            tops.append(None if logprob is None else {decode([t[1]]): t[0] for t in top})
            offsets.append(position)
            position += len(tokens[-1])

    if prompt_text is not None:
        entries = meta.get("input_token_logprobs", [])
        add(entries, _rows(meta, "input_top_logprobs", entries))
        position = start + len(prompt_text)
    entries = meta.get("output_token_logprobs", [])
    add(entries, _rows(meta, "output_top_logprobs", entries))
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(decode: Any, meta: dict[str, Any]) -> dict[str, Any]:
    entries = meta.get("output_token_logprobs", [])

    def token(tid: int) -> tuple[str, list[int]]:
        text = decode([tid])
        return text, list(text.encode("utf-8"))

    content = []
    for (logprob, tid, *_), top in zip(entries, _rows(meta, "output_top_logprobs", entries)):
        text, raw = token(tid)
        alternatives = [dict(zip(("token", "bytes"), token(t[1])), logprob=t[0]) for t in top]
        content.append({"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": alternatives})
    return {"content": content}
