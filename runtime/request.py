"""Request state owned by the scheduler thread, and the output records it sends back."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loomlm.runtime.sampling_params import SamplingParams

if TYPE_CHECKING:
    from loomlm.runtime.constrained import GrammarState
    from loomlm.runtime.detokenizer import IncrementalDetokenizer, StopStringMatcher
    from loomlm.runtime.radix_cache import TreeNode


class ReqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class LogprobOptions:
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logprob_start_len: int = -1  # -1: output tokens only; k >= 0: prompt tokens from position k too

    def __post_init__(self) -> None:
        if not isinstance(self.top_logprobs_num, int) or self.top_logprobs_num < 0:
            raise ValueError(f"top_logprobs_num must be an integer >= 0, got {self.top_logprobs_num!r}")
        if not isinstance(self.logprob_start_len, int) or self.logprob_start_len < -1:
            raise ValueError(f"logprob_start_len must be -1 or an integer >= 0, got {self.logprob_start_len!r}")


@dataclass(frozen=True)
class RequestOptions:
    """How one `generate` call's requests are named, isolated and ranked (not how they sample)."""

    rid: str | None = None  # a single request's id, or the prefix of several ("rid-0", "rid-1", ...)
    cache_salt: str | None = None  # requests with different salts never share cached prefixes
    priority: int = 0  # larger = more important: admitted first, retracted last

    def __post_init__(self) -> None:
        if self.rid is not None and not isinstance(self.rid, str):
            raise ValueError(f"rid must be a string, got {self.rid!r}")
        if self.cache_salt is not None and not isinstance(self.cache_salt, str):
            raise ValueError(f"cache_salt must be a string, got {self.cache_salt!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ValueError(f"priority must be an integer, got {self.priority!r}")


@dataclass
class ReqOutput:
    """One increment sent to the caller: new text/tokens, and meta info (complete when finished)."""

    rid: str
    text_delta: str
    new_token_ids: list[int]
    finished: bool
    meta_info: dict[str, Any]


@dataclass
class FinishReason:
    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "matched": self.matched}
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass(eq=False)
class Req:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    logprobs: LogprobOptions
    sink: Callable[[ReqOutput], None]  # called on the scheduler thread
    max_new_tokens: int  # params.max_new_tokens clamped to the context length
    detokenizer: IncrementalDetokenizer  # output ids -> text increments
    stop_token_ids: frozenset[int] = frozenset()
    cache_salt: str | None = None  # requests with different salts share no cached prefix
    priority: int = 0  # larger = more important
    arrival: int = 0  # admission order key (fcfs; retracted requests keep theirs)
    status: ReqStatus = ReqStatus.WAITING
    row: int = -1  # req_to_token row, also the sampler row
    kv_len: int = 0  # leading fill tokens whose K/V are in the pool
    cache_len: int = 0  # leading tokens whose slots the radix tree owns (locked via last_node)
    last_node: TreeNode | None = None  # radix node this request holds a lock on
    cached_tokens: int = 0  # prompt tokens served from the cache at first admission
    queued_at: float = 0.0  # scheduler clock when it was queued
    queue_time: float | None = None  # seconds from queued to first admitted (None: never admitted)
    scored_upto: int = 0  # next prompt position whose input logprob is still to be computed
    skipped: int = 0  # times a later request was admitted first (lpm starvation bound)
    retractions: int = 0
    admissions: int = 0  # times admitted (again after a retraction or a jump-forward)
    grammar: GrammarState | None = None  # constrained output: its position in the guide
    # Speculative decoding: its drafting state (n-gram DraftState, or the draft model's DraftModelState);
    # both count `verify_passes`.
    draft_state: Any = None
    output_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_matcher: StopStringMatcher | None = None  # stop strings, if any
    input_token_logprobs: list[tuple] = field(default_factory=list)
    input_top_logprobs: list[list[tuple]] = field(default_factory=list)
    output_token_logprobs: list[tuple] = field(default_factory=list)
    output_top_logprobs: list[list[tuple]] = field(default_factory=list)

    @property
    def seq_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def fill_ids(self) -> list[int]:
        """Tokens whose K/V the request needs before its next sample: prompt, then every output token."""
        return self.prompt_ids + self.output_ids if self.output_ids else self.prompt_ids

    @property
    def remaining_new_tokens(self) -> int:
        return max(self.max_new_tokens - len(self.output_ids), 0)
