"""The naive baseline of `python -m loomlm.bench programs`: programs run on plain transformers.

`NaiveHFBackend` implements the lang `Backend` with no runtime in between: every gen is one
independent `model.generate` call on the full prompt text (so every prompt is computed from scratch,
with no KV reused across calls), every select scores each choice with one forward pass over
prompt + choice, and `prefill` does nothing. Calls are serialised by a lock: one gen at a time, which
is what running a program without a serving runtime means.

It honours what the benchmark's programs use: greedy decoding (anything else is a `ValueError`),
`max_new_tokens`, `min_new_tokens`, `ignore_eos`, `stop_token_ids`, stop strings (matched on the text
decoded with special tokens skipped, as the engine does, and cut off with everything after them), and
`regex` / `json_schema` constraints, applied by a logits processor that walks the same compiled
`loomlm.grammars` guide the engine would use (without jump-forward). The model is built from the same
weights as loomlm's by `hf_baseline.load_hf_model`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from loomlm.lang.backends.base import Backend, GenResult
from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.choices import ChoicesDecision, ChoicesMethod
from loomlm.lang.ir import LogprobRequest


@dataclass
class NaiveCounts:
    """Work done by the baseline (all of it computed: there is no cache)."""

    generate_calls: int = 0
    select_calls: int = 0
    forward_passes: int = 0  # select scoring passes (generate's own passes are not counted)
    prefill_tokens: int = 0  # prompt tokens run through the model (generate prompts + select inputs)
    output_tokens: int = 0


class _GuideWalk:
    """Position of one generate call's output in a guide; synced from the ids generated so far (the
    logits processor and the stopping criterion both call `sync`, so it is idempotent)."""

    def __init__(self, guide: Any, prompt_len: int):
        self.guide = guide
        self.state = guide.initial_state
        self.seen = prompt_len

    def sync(self, input_ids: torch.Tensor) -> int:
        from loomlm.grammars import REJECTED

        for token in input_ids[0, self.seen :].tolist():
            state = self.guide.advance(self.state, token)
            if state is REJECTED:
                raise ValueError(f"token {token} is outside the constraint ({self.guide.description})")
            self.state = state
        self.seen = input_ids.shape[1]
        return self.state


class _GuideLogits:
    """Logits processor: everything the guide does not allow next gets -inf."""

    def __init__(self, walk: _GuideWalk, vocab_size: int):
        self.walk = walk
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        allowed = torch.from_numpy(self.walk.guide.allowed_tokens(self.walk.sync(input_ids)))
        blocked = torch.ones(scores.shape[-1], dtype=torch.bool)
        blocked[: self.vocab_size] = ~allowed[: self.vocab_size]
        return scores.masked_fill(blocked.to(scores.device), float("-inf"))


class _StopWhen:
    """Stopping criterion: a stop string appeared in the decoded output, or the guide can only end."""

    def __init__(
        self, tokenizer: Any, prompt_len: int, stops: Sequence[str], skip_special: bool, walk: _GuideWalk | None
    ):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = tuple(stops)
        self.skip_special = skip_special
        self.walk = walk

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        done = False
        if self.walk is not None:
            done = self.walk.guide.is_finished(self.walk.sync(input_ids))
        if not done and self.stops:
            text = self.tokenizer.decode(
                input_ids[0, self.prompt_len :].tolist(), skip_special_tokens=self.skip_special
            )
            done = any(stop in text for stop in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """Text before the earliest stop string (shortest on a tie), and that stop (None if none)."""
    best: tuple[int, int, str] | None = None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (best is None or (at, len(stop)) < best[:2]):
            best = (at, len(stop), stop)
    return (text, None) if best is None else (text[: best[0]], best[2])


def choice_token_starts(prompt_ids: Sequence[int], full: Sequence[Sequence[int]]) -> list[int]:
    """Index of each choice's first scored token: where tokenize(prompt + choice) departs from
    tokenize(prompt) (at least 1: the first token of a sequence has no logprob). Same rule as the
    in-process backend, so both score the same tokens."""
    starts = []
    for ids in full:
        n = min(len(prompt_ids), len(ids))
        i = 0
        while i < n and prompt_ids[i] == ids[i]:
            i += 1
        starts.append(max(i, 1))
    return starts


class NaiveHFBackend(Backend):
    """`NaiveHFBackend(model_path=None, load_format="auto", dtype="float32", device="cpu", seed=0)`."""

    def __init__(
        self,
        model_path: str | None = None,
        load_format: str = "auto",
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
    ):
        from loomlm.bench.hf_baseline import load_hf_model
        from loomlm.runtime.config import DTYPES
        from loomlm.runtime.models.loader import resolve_model_path
        from loomlm.runtime.tokenizer import load_tokenizer

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.model_path = resolve_model_path(model_path)
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_hf_model(model_path, load_format, DTYPES[dtype], self.device, seed)
        # The engine's EOS set: the model's (here read back from the transformers config built from the
        # same file, which load_hf_model leaves alone) and the tokenizer's.
        config_eos = self.model.config.eos_token_id
        eos = set(config_eos if isinstance(config_eos, (list, tuple)) else ([] if config_eos is None else [config_eos]))
        self.vocab_size = int(self.model.config.vocab_size)
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids = tuple(sorted(eos))
        self.chat_template = ChatTemplate.from_tokenizer(self.tokenizer)
        self.counts = NaiveCounts()
        self._lock = threading.Lock()  # one model call at a time
        self._guides: dict[tuple[str, str], Any] = {}
        self._vocab: Any = None

    def model_name(self) -> str:
        return f"transformers {self.model_path}"

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def _guide(self, kind: str, spec: str) -> Any:
        """The compiled guide of a regex or JSON schema (compiled once per spec, like the engine's cache)."""
        from loomlm.grammars import GrammarLimits, GrammarSpec, Vocabulary, compile_spec

        key = (kind, spec)
        if key not in self._guides:
            if self._vocab is None:
                self._vocab = Vocabulary.from_tokenizer(self.tokenizer, self.eos_token_ids, size=self.vocab_size)
            self._guides[key] = compile_spec(GrammarSpec(kind, spec), self._vocab, GrammarLimits())
        return self._guides[key]

    def generate(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> GenResult:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        from loomlm.runtime.sampling_params import SamplingParams

        params = SamplingParams.from_dict(sampling)
        if not params.is_greedy:
            raise ValueError("the naive transformers baseline decodes greedily only: give temperature=0")
        if logprobs.return_logprob or params.n != 1 or params.choices is not None:
            raise ValueError("the naive transformers baseline takes no return_logprob, n or choices")
        if (params.frequency_penalty, params.presence_penalty, params.repetition_penalty) != (0.0, 0.0, 1.0):
            raise ValueError("the naive transformers baseline takes no penalties")
        ids = self._encode(prompt)
        walk = None
        if params.regex is not None or params.json_schema is not None:
            kind, spec = ("regex", params.regex) if params.regex is not None else ("json_schema", params.json_schema)
            walk = _GuideWalk(self._guide(kind, spec), len(ids))
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        new: list[int] = []
        with self._lock:
            self.counts.generate_calls += 1
            if params.max_new_tokens > 0:  # (0 new tokens: nothing to compute without a cache to fill)
                self.counts.prefill_tokens += len(ids)
                config = GenerationConfig(
                    max_new_tokens=params.max_new_tokens,
                    min_new_tokens=params.min_new_tokens,
                    do_sample=False,
                    eos_token_id=sorted(stop_ids) or None,
                    pad_token_id=self.eos_token_ids[0] if self.eos_token_ids else 0,
                )
                processors = LogitsProcessorList([_GuideLogits(walk, self.vocab_size)] if walk else [])
                criteria = StoppingCriteriaList(
                    [_StopWhen(self.tokenizer, len(ids), params.stop, params.skip_special_tokens, walk)]
                )
                input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
                with torch.inference_mode():
                    out = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        generation_config=config,
                        logits_processor=processors,
                        stopping_criteria=criteria,
                    )
                new = out[0, len(ids) :].tolist()
            self.counts.output_tokens += len(new)
        return GenResult(*self._finish(new, params, walk, len(ids)))

    def _finish(
        self, new: list[int], params: Any, walk: _GuideWalk | None, prompt_len: int
    ) -> tuple[str, dict[str, Any]]:
        """Output text and the engine-style meta info of one generate call."""
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        body = new[:-1] if new and new[-1] in stop_ids else new  # a stop token is not part of the text
        text, matched = _cut_at_stop(
            self.tokenizer.decode(body, skip_special_tokens=params.skip_special_tokens), params.stop
        )
        if body is not new:
            reason = {"type": "stop", "matched": new[-1]}
        elif matched is not None:
            reason = {"type": "stop", "matched": matched}
        elif walk is not None and new and walk.guide.is_finished(walk.state):
            reason = {"type": "stop", "matched": None}
        else:
            reason = {"type": "length", "matched": None}
        return text, {
            "prompt_tokens": prompt_len,
            "completion_tokens": len(new),
            "cached_tokens": 0,
            "finish_reason": reason,
        }

    def generate_stream(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> Iterator[GenResult]:
        yield self.generate(prompt, sampling, logprobs)  # one increment: the whole output

    def _choice_logprobs(self, ids: Sequence[int], start: int) -> list[tuple[float | None, int, None]]:
        """One forward pass over `ids`; logprobs of ids[start:] (entry 0 is None when start is 0)."""
        keep = len(ids) - max(start, 1) + 1  # logits at positions start-1 .. len-1
        with torch.inference_mode():
            logits = (
                self.model(torch.tensor([list(ids)], dtype=torch.long, device=self.device), logits_to_keep=keep)
                .logits[0, :-1]
                .float()
            )
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(list(ids[max(start, 1) :]), dtype=torch.long, device=logprobs.device)
        values = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        self.counts.forward_passes += 1
        self.counts.prefill_tokens += len(ids)
        head = [(None, int(ids[0]), None)] if start == 0 else []
        return head + [(v, int(t), None) for v, t in zip(values, ids[max(start, 1) :])]

    def select(self, prompt: str, choices: Sequence[str], method: ChoicesMethod) -> ChoicesDecision:
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"select needs a non-empty list of non-empty strings, got {choices!r}")
        prompt_ids = self._encode(prompt)
        if not prompt_ids:
            raise ValueError("select needs a non-empty prompt: a choice's first token has no logprob without context")
        full = [self._encode(prompt + c) for c in choices]
        starts = choice_token_starts(prompt_ids, full)
        for choice, ids, start in zip(choices, full, starts):
            if start >= len(ids):
                raise ValueError(f"select choice {choice!r} adds no token to the prompt")
        with self._lock:
            self.counts.select_calls += 1
            scored = [self._choice_logprobs(ids, start) for ids, start in zip(full, starts)]
            unconditional = None
            if method.needs_unconditional:
                unconditional = [self._choice_logprobs(ids[start:], 0) for ids, start in zip(full, starts)]
        decision = method(list(choices), scored, unconditional)
        decision.meta_info.update(
            prompt_tokens=len(prompt_ids),
            output_token_logprobs=[[] for _ in choices],
            choice_prompt_tokens=[len(ids) for ids in full],
            cached_tokens=[0 for _ in choices],
        )
        return decision
