"""Fields the SGLang router (`sglang-router`) writes into every request it forwards, and the request id
it passes as a header.

The router parses each request into its own types and sends them on re-serialised, so a body that
left the client as `{"text": ...}` reaches the worker with SGLang's bookkeeping fields set to their
defaults (`"model": null`, `"log_metrics": true`, `"no_stop_trim": false`, ...). loomlm refuses unknown
fields, so these are declared here once, for the native and the OpenAI bodies. A field that only
tunes logging or reasoning output (loomlm has no reasoning parser) is accepted with any value; one that
asks for an output loomlm cannot give (`return_hidden_states: true`, `no_stop_trim: true`, ...) is a
400 naming it rather than a silently different answer.

The router forwards the client's `X-Request-Id` header (and drops a chat body's `rid`), so a request
with no `rid` in its body takes the header's value as its engine request id: `/abort_request` and the
request log then name what the client named.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator

REQUEST_ID_HEADER = "x-request-id"

# Ask for an output loomlm does not produce: only their default (False) is accepted.
_UNSUPPORTED_WHEN_TRUE = {
    "return_hidden_states": "hidden states are not returned",
    "return_bytes": "token bytes are not returned",
    "return_entropy": "entropies are not returned",
    "background": "background requests are not supported",
    "no_stop_trim": "the stop string is always trimmed from the output",
    "continue_final_message": "continuing the final assistant message is not supported",
}


class RouterFields(BaseModel):
    """Mixed into a request body: SGLang's bookkeeping fields the router adds."""

    return_hidden_states: bool = False
    return_bytes: bool = False
    return_entropy: bool = False
    background: bool = False
    no_stop_trim: bool = False
    continue_final_message: bool = False
    # accepted, no effect: logging switches and reasoning-parser options
    log_metrics: bool = True
    no_logs: bool = False
    separate_reasoning: bool = True
    stream_reasoning: bool = True

    @field_validator(*_UNSUPPORTED_WHEN_TRUE)
    @classmethod
    def _false_only(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            raise ValueError(f"{_UNSUPPORTED_WHEN_TRUE[info.field_name]} (only false is accepted)")
        return value


def request_id(body_rid: str | None, headers: Any) -> str | None:
    """The engine request id: the body's `rid`, else the `X-Request-Id` header, else None (the engine
    names it)."""
    if body_rid is not None:
        return body_rid
    value = headers.get(REQUEST_ID_HEADER)
    return value if value else None
