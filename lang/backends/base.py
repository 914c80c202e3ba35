"""The backend interface the interpreter calls; the only way `lang` reaches a model.

A backend takes text prompts and the engine's sampling-parameter dict (`GenParams.to_sampling_dict()`),
and returns text with SGLang-style meta info (`prompt_tokens`, `completion_tokens`, `cached_tokens`,
`finish_reason`, logprobs when asked). Errors in the request (a bad parameter, grammar or prompt) are
raised as `ValueError`s naming the problem.
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


class Backend(ABC):
    """One model behind a program. Thread-safe: many program executors call it at once."""

    chat_template: ChatTemplate

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
