"""The OpenAI request bodies the server accepts (pydantic), and their sampling parameters.

Unknown fields are refused (400 naming the field), so a constraint loomlm does not know never yields
silently unconstrained output; a few fields OpenAI clients send for bookkeeping only (`user`,
`metadata`, `store`, `service_tier`) are accepted and ignored. SGLang's extension fields (`regex`,
`ebnf`, `json_schema`, `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`, `rid`, ...) and vLLM's
names for constraints (`guided_json`, `guided_regex`, `guided_choice`), which the `openai` client sends
through `extra_body`, sit next to the standard ones. `sampling_params` maps a request to
the engine's sampling-parameter dict; `SamplingParams` validates it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loomlm.runtime.server.errors import ApiError
from loomlm.runtime.server.router_fields import RouterFields

DEFAULT_MAX_TOKENS = {"completion": 16, "chat": None}  # OpenAI's defaults: 16 for completions, to the end for chat


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format of type json_schema needs json_schema.schema")
        return self


class _Common(RouterFields):
    """Fields both endpoints share (OpenAI's and SGLang's extensions, and the SGLang router's
    bookkeeping fields)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormat | None = None
    # accepted and ignored (bookkeeping fields of OpenAI's API)
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # SGLang / vLLM extensions (extra_body)
    regex: str | None = None
    ebnf: str | None = None
    json_schema: str | dict[str, Any] | None = None
    structural_tag: str | dict[str, Any] | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    rid: str | None = None  # the engine request's id (abort it with /abort_request); `rid-i` for several
    # vLLM's names of the same constraints: guided_json is json_schema, guided_regex is regex,
    # guided_choice is choices (the output is exactly one of the strings)
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None

    @model_validator(mode="after")
    def _options_need_stream(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The content as text (content parts must be text parts)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        pieces = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(
                    400, f"content parts of type {part.get('type')!r} are not supported (text only)", "messages"
                )
            pieces.append(part["text"])
        return "".join(pieces)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


_EXTENSIONS = (
    "regex",
    "ebnf",
    "top_k",
    "min_p",
    "repetition_penalty",
    "stop_token_ids",
    "ignore_eos",
    "skip_special_tokens",
)


_VLLM_CONSTRAINTS = (("guided_json", "json_schema"), ("guided_regex", "regex"), ("guided_choice", "choices"))


def sampling_params(req: _Common, kind: str) -> dict[str, Any]:
    """The engine sampling parameters of an OpenAI request (`kind`: "completion" or "chat")."""
    limit = getattr(req, "max_completion_tokens", None) or req.max_tokens or DEFAULT_MAX_TOKENS[kind]
    params: dict[str, Any] = {} if limit is None else {"max_new_tokens": limit}
    for name in ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", *_EXTENSIONS):
        if getattr(req, name) is not None:
            params[name] = getattr(req, name)
    if req.min_tokens is not None:
        params["min_new_tokens"] = req.min_tokens
    if req.n > 1:
        params["n"] = req.n
    for name in ("json_schema", "structural_tag"):
        value = getattr(req, name)
        if value is not None:
            params[name] = value if isinstance(value, str) else json.dumps(value)
    for alias, name in _VLLM_CONSTRAINTS:
        value = getattr(req, alias)
        if value is None:
            continue
        if name in params:
            raise ApiError(400, f"give one of {alias} and {name} (they are the same constraint)", alias)
        params[name] = json.dumps(value) if isinstance(value, dict) else value
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        if "json_schema" in params:
            raise ApiError(400, "give one of response_format and json_schema", "response_format")
        schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else {"type": "object"}
        params["json_schema"] = json.dumps(schema)
    return params
