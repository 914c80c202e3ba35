"""The backend interface the interpreter calls; the only way `lang` reaches a model.

A backend takes text prompts and the engine's sampling-parameter dict (`GenParams.to_sampling_dict()`),
and returns text with SGLang-style meta info (`prompt_tokens`, `completion_tokens`, `cached_tokens`,
`finish_reason`, logprobs when asked). Errors in the request (a bad parameter, grammar or prompt) are
raised as `ValueError`s naming the problem.

A backend that needs the conversation rather than the text (a chat-completions API) sets
`wants_chat_context = True`; the interpreter then also passes `chat=ChatContext(...)` to its `generate`,
`generate_stream` and `select`. Other backends are called exactly as before.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.choices import ChoicesDecision, ChoicesMethod
from loomlm.lang.ir import LogprobRequest


@dataclass(frozen=True)
class GenResult:
    text: str
    meta_info: dict[str, Any]


# Output-side meta keys a streamed chunk may carry for its own tokens only (SGLang's incremental streaming;
# loomlm's Engine streams so); `output_token_logprobs_length` is then the count sent so far in all.
STREAM_SLICED_KEYS = ("output_token_logprobs", "output_top_logprobs")


def accumulate_stream_meta(so_far: dict[str, Any] | None, chunk: dict[str, Any]) -> dict[str, Any]:
    """The meta info of a stream so far, given the previous one and the next chunk's. A chunk whose output
    logprobs are fewer than its `output_token_logprobs_length` holds just its own (incremental): they are
    appended. One with all of them (SGLang's cumulative default), or without that length, replaces them."""
    length = chunk.get("output_token_logprobs_length")
    own = chunk.get("output_token_logprobs")
    if so_far is None or length is None or own is None or len(own) >= length:
        return dict(chunk)
    merged = dict(chunk)
    for key in STREAM_SLICED_KEYS:
        if key in chunk:
            merged[key] = list(so_far.get(key) or []) + list(chunk[key])
    return merged


@dataclass(frozen=True)
class ChatContext:
    """The conversation where a gen or select runs: the finished messages, and the role begun but not yet
    ended there (None outside roles) with the text appended inside it so far."""

    messages: tuple[dict[str, str], ...]
    open_role: str | None = None
    open_text: str = ""


def chat_kwargs(backend: Backend, executor: Any) -> dict[str, Any]:
    """`{"chat": ChatContext}` for a backend that wants it, else `{}` (read off a `StreamExecutor`)."""
    if not getattr(backend, "wants_chat_context", False):
        return {}
    role = executor.cur_role
    text = executor.text_[executor.cur_role_begin_pos :] if role is not None else ""
    return {"chat": ChatContext(tuple(executor.messages_), role, text)}


class Backend(ABC):
    """One model behind a program. Thread-safe: many program executors call it at once."""

    chat_template: ChatTemplate
    wants_chat_context = False  # True: generate/generate_stream/select also get `chat=ChatContext`

    @abstractmethod
    def generate(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> GenResult:
        """Continue `prompt`; blocks until the output is complete."""

    @abstractmethod
    def generate_stream(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> Iterator[GenResult]:
        """Continue `prompt`, yielding increments: the text delta and the meta info so far (every output
        logprob up to here: see `accumulate_stream_meta`)."""

    @abstractmethod
    def select(self, prompt: str, choices: Sequence[str], method: ChoicesMethod) -> ChoicesDecision:
        """Score each choice as a continuation of `prompt` and let `method` pick one."""

    def prefill(self, prompt: str) -> None:  # noqa: B027 (an optional hook, a no-op by default)
        """Compute and cache `prompt`'s KV so later requests sharing it start from the cache (no-op
        where the backend has no cache to fill)."""

    def model_name(self) -> str:
        return type(self).__name__

    def flush_cache(self) -> bool:
        """Drop cached prefixes; True if done. False where there is no cache this client can flush."""
        return False

    def get_server_info(self) -> dict[str, Any]:
        """What is known about the model behind the backend (`sgl.get_server_info`)."""
        return {"model_path": self.model_name()}

    def shutdown(self) -> None:  # noqa: B027 (an optional hook, a no-op by default)
        """Release what the backend owns (an in-process engine); a no-op for clients."""
