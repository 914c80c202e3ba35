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
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.choices import ChoicesDecision, ChoicesMethod
from loomlm.lang.ir import LogprobRequest


@dataclass(frozen=True)
class GenResult:
    text: str
    meta_info: dict[str, Any]


@dataclass(frozen=True)
class ChatContext:
    """The conversation where a gen or select runs: the finished messages, and the role begun but not yet
    ended there (None outside roles) with the text appended inside it so far."""
    messages: tuple[dict[str, str], ...]
    open_role: str | None = None
    open_text: str = ""


def chat_kwargs(backend: "Backend", executor: Any) -> dict[str, Any]:
    """`{"chat": ChatContext}` for a backend that wants it, else `{}` (read off a `StreamExecutor`)."""
    if not getattr(backend, "wants_chat_context", False):
        return {}
    role = executor.cur_role
    text = executor.text_[executor.cur_role_begin_pos:] if role is not None else ""
    return {"chat": ChatContext(tuple(executor.messages_), role, text)}


class Backend(ABC):
    """One model behind a program. Thread-safe: many program executors call it at once."""

    chat_template: ChatTemplate
    wants_chat_context = False     # True: generate/generate_stream/select also get `chat=ChatContext`

    @abstractmethod
    def generate(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> GenResult:
        """Continue `prompt`; blocks until the output is complete."""

    @abstractmethod
    def generate_stream(self, prompt: str, sampling: dict[str, Any],
                        logprobs: LogprobRequest) -> Iterator[GenResult]:
        """Continue `prompt`, yielding increments (text delta, meta info so far)."""

    @abstractmethod
    def select(self, prompt: str, choices: Sequence[str], method: ChoicesMethod) -> ChoicesDecision:
        """Score each choice as a continuation of `prompt` and let `method` pick one."""

    def prefill(self, prompt: str) -> None:
        """Compute and cache `prompt`'s KV so later requests sharing it start from the cache (no-op
        where the backend has no cache to fill)."""

    def model_name(self) -> str:
        return type(self).__name__

    def shutdown(self) -> None:
        """Release what the backend owns (an in-process engine); a no-op for clients."""
