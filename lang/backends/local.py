"""The in-process backend: programs call a `loomlm.runtime.Engine` in the same process.

`Runtime(**engine_args)` starts an engine (the default model unless `model_path=` says otherwise) and
owns it; `LocalBackend(engine)` borrows one the caller made. The runtime is imported only here, so
importing `loomlm.lang` stays light.

`select` scores with `loomlm.lang.choices.score_select`: the prompt is prefilled once (the radix cache
then holds it) and every `prompt + choice` goes to the engine in one call, so the scheduler puts them
in one extend batch in which each request computes only the tokens after the cached prompt.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

from loomlm.lang.backends.base import Backend, GenResult, accumulate_stream_meta
from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.choices import ChoicesDecision, ChoicesMethod, check_select_args, score_select
from loomlm.lang.ir import LogprobRequest

_SCORE_ONLY = {"max_new_tokens": 0, "temperature": 0.0}


class LocalBackend(Backend):
    """A backend over an existing engine (`loomlm.Engine`); `shutdown` leaves the engine running."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.chat_template = ChatTemplate.from_tokenizer(engine.tokenizer)

    def model_name(self) -> str:
        return str(self.engine.runner.model_path)

    def flush_cache(self) -> bool:
        return bool(self.engine.flush_cache())

    def get_server_info(self) -> dict[str, Any]:
        return {"model_path": self.model_name(), **self.engine.get_stats()}

    def _logprob_kwargs(self, lp: LogprobRequest) -> dict[str, Any]:
        return {
            "return_logprob": lp.return_logprob,
            "top_logprobs_num": lp.top_logprobs_num,
            "logprob_start_len": lp.logprob_start_len,
        }

    def _meta(self, meta: dict[str, Any], lp: LogprobRequest) -> dict[str, Any]:
        if not (lp.return_logprob and lp.return_text_in_logprobs):
            return meta
        meta = dict(meta)
        for key in ("input_token_logprobs", "output_token_logprobs"):
            entries = meta.get(key) or []
            texts = self.tokenizer.batch_decode([[e[1]] for e in entries]) if entries else []
            meta[key] = [(e[0], e[1], t) for e, t in zip(entries, texts)]
        return meta

    def generate(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> GenResult:
        out = self.engine.generate(prompt, sampling, **self._logprob_kwargs(logprobs))
        return GenResult(out["text"], self._meta(out["meta_info"], logprobs))

    def generate_stream(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> Iterator[GenResult]:
        meta = None  # the engine's chunks hold their own output logprobs only: gather them
        for chunk in self.engine.generate(prompt, sampling, stream=True, **self._logprob_kwargs(logprobs)):
            meta = accumulate_stream_meta(meta, chunk["meta_info"])
            yield GenResult(chunk["text"], self._meta(meta, logprobs))

    @property
    def _caching(self) -> bool:
        return not self.engine.config.disable_radix_cache

    def prefill(self, prompt: str) -> None:
        if prompt and self._caching:  # without a cache the computed KV would be thrown away
            self.engine.generate(prompt, _SCORE_ONLY)

    def select(self, prompt: str, choices: Sequence[str], method: ChoicesMethod) -> ChoicesDecision:
        check_select_args(prompt, choices)
        encode = lambda text: self.tokenizer(text)["input_ids"]
        return score_select(
            encode(prompt),
            [encode(prompt + c) for c in choices],
            choices,
            method,
            self._input_logprobs,
            self._prefill_ids,
        )

    def _prefill_ids(self, ids: list[int]) -> None:
        if self._caching:
            self.engine.generate(input_ids=ids, sampling_params=_SCORE_ONLY)

    def _input_logprobs(self, id_lists: list[list[int]], start: int) -> list[tuple[list, dict[str, Any]]]:
        outs = self.engine.generate(
            input_ids=id_lists,
            sampling_params=[_SCORE_ONLY] * len(id_lists),
            return_logprob=True,
            logprob_start_len=start,
        )
        return [(o["meta_info"]["input_token_logprobs"], o["meta_info"]) for o in outs]


class Runtime(LocalBackend):
    """An in-process engine owned by this backend: `Runtime(model_path=None, **engine_args)`.

    The arguments are `loomlm.EngineConfig`'s (SGLang server-argument names); an unknown one is a
    `TypeError`, as a misspelt keyword argument is anywhere in Python."""

    def __init__(self, model_path: str | None = None, **engine_args: Any):
        from loomlm.runtime.config import EngineConfig
        from loomlm.runtime.engine import Engine

        known = set(inspect.signature(EngineConfig).parameters)
        for name in engine_args:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(
                    f"Runtime got an unknown argument {name!r}{hint}; the engine arguments are: "
                    f"{', '.join(sorted(known))}"
                )
        super().__init__(Engine(model_path, **engine_args))

    def shutdown(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
