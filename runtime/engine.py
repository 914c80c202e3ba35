"""Engine: the offline, in-process entry point (modelled on SGLang's `sgl.Engine`).

    engine = Engine()                                   # default model, float32 on CPU
    out = engine.generate("The capital of France is", {"max_new_tokens": 16, "temperature": 0})
    out["text"], out["output_ids"], out["meta_info"]

`generate` accepts one prompt or a list (or `input_ids`), one sampling-parameter dict or one per prompt,
and returns a dict or a list of dicts; `stream=True` yields increments (SGLang's incremental chunks: a
chunk's meta info holds only its own output logprobs, see `engine_outputs.py`); `async_generate` is the
asyncio form used by servers. Both take the same arguments (`GenerateCall`) and share one submit path.
Requests are validated here, on the caller's thread, before they reach the loop.

Structured output (`regex`, `json_schema`, `choices` sampling parameters): the grammar is compiled on a
worker thread of the engine's `GrammarCache` while the caller waits (sync) or awaits (async), so the
scheduler loop never compiles; a bad or too-big grammar raises `GrammarError` (a `ValueError`) here and
nothing is submitted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import queue
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from loomlm.grammars import GrammarCache, GrammarLimits, GrammarSpec, Guide, Vocabulary, spec_from_params
from loomlm.runtime.config import EngineConfig
from loomlm.runtime.constrained import GrammarState
from loomlm.runtime.detokenizer import IncrementalDetokenizer, StopStringMatcher
from loomlm.runtime.engine_core import EngineCore
from loomlm.runtime.engine_outputs import Results, StreamChunks, member_rid
from loomlm.runtime.model_runner import ModelRunner
from loomlm.runtime.request import LogprobOptions, Req, ReqOutput, RequestOptions
from loomlm.runtime.sampling_params import SamplingParams
from loomlm.runtime.tokenizer import load_tokenizer

Prepared = list[tuple[list[int], SamplingParams]]  # (prompt ids, params) per prompt


@dataclass(frozen=True)
class GenerateCall:
    """The arguments of one `generate` / `async_generate` call: SGLang's names, order and defaults. The one
    definition of them: both methods' signatures are built from these fields (`_takes_call`)."""

    prompt: str | Sequence[str] | None = None
    sampling_params: Any = None
    input_ids: Any = None
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logprob_start_len: int = -1
    stream: bool = False
    rid: str | None = None
    cache_salt: str | None = None  # requests with different salts never share cached prefixes
    priority: int = 0  # larger is more important (admitted first, retracted last)


def _takes_call(method: Callable[..., Any]) -> Callable[..., Any]:
    """Give `method(self, *args, **kwargs)` the inspectable signature `(self, <GenerateCall fields>)`; the
    body builds `GenerateCall(*args, **kwargs)`, which rejects unknown or doubled arguments as usual."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default, annotation=f.type)
        for f in dataclasses.fields(GenerateCall)
    ]
    method.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return method


@dataclass(frozen=True)
class _Submission:
    """A validated call, ready to be expanded into requests once its grammars are compiled."""

    prepared: Prepared
    single: bool  # one prompt given (not a list): the answer is one dict
    logprobs: LogprobOptions
    opts: RequestOptions
    stream: bool


class Engine:
    def __init__(self, model_path: str | None = None, **kwargs: Any):
        self.config = EngineConfig.from_kwargs(model_path=model_path, **kwargs)
        # The model is loaded on the compute thread, where every forward runs (runtime/compute_thread.py:
        # one thread does the process's parallel torch work).
        self.core = EngineCore.launch(self._build, self.config)
        self.runner = self.core.runner
        self.tokenizer = self.core.tokenizer
        self.context_length = self.runner.context_length
        self.eos_token_ids = self._eos_ids()
        self._rng = random.Random(self.config.random_seed)
        self._grammars: GrammarCache | None = None  # made on the first constrained request

    def _build(self) -> tuple[ModelRunner, Any]:
        runner = ModelRunner(self.config)
        try:
            return runner, load_tokenizer(runner.model_path, self.config.tokenizer_path)
        except BaseException:  # e.g. an unreadable tokenizer: the tensor-parallel ranks must not linger
            runner.close()
            raise

    @property
    def grammars(self) -> GrammarCache:
        """Compiled-guide cache over this model's vocabulary (token bytes, EOS ids, logits width)."""
        if self._grammars is None:
            vocab = Vocabulary.from_tokenizer(self.tokenizer, self.eos_token_ids, size=self.runner.vocab_size)
            cfg = self.config
            limits = GrammarLimits(
                cfg.grammar_max_states,
                float(cfg.grammar_timeout_s),
                max_parser_items=cfg.grammar_max_parser_items,
                max_mask_fuel=cfg.grammar_max_mask_fuel,
            )
            self._grammars = GrammarCache(
                vocab, limits, self.config.grammar_cache_size, whitespace=self.config.json_whitespace
            )
        return self._grammars

    def _grammar_futures(self, prepared: Prepared) -> dict[GrammarSpec, Any]:
        """Start compiling (on the cache's worker thread) every grammar the requests need."""
        specs = {spec for _, p in prepared if (spec := spec_from_params(p)) is not None}
        return {spec: self.grammars.get(spec) for spec in specs}

    def _compile_grammars(self, prepared: Prepared) -> dict[GrammarSpec, Guide]:
        """Wait for every grammar the requests need; GrammarError if one does not compile."""
        return {spec: fut.result() for spec, fut in self._grammar_futures(prepared).items()}

    async def _acompile_grammars(self, prepared: Prepared) -> dict[GrammarSpec, Guide]:
        """The same, awaited: the event loop keeps running while a grammar compiles."""
        return {spec: await asyncio.wrap_future(fut) for spec, fut in self._grammar_futures(prepared).items()}

    def _eos_ids(self) -> frozenset[int]:
        ids = set(getattr(self.runner.model_config, "eos_token_ids", ()) or ())
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    # ---- request construction (caller's thread) ------------------------------------------------
    def _prepare(
        self,
        prompt: str | Sequence[str] | None,
        sampling_params: Any,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None,
        logprobs: LogprobOptions,
    ) -> tuple[Prepared, bool]:
        """Validate everything and return (prompt ids, params) per request, and whether input was a list."""
        if (prompt is None) == (input_ids is None):
            raise ValueError("give exactly one of prompt and input_ids")
        if prompt is not None:
            single = isinstance(prompt, str)
            texts = [prompt] if single else list(prompt)
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("prompt must be a string or a list of strings")
            id_lists = [self.tokenizer(t)["input_ids"] for t in texts]
        else:
            single = len(input_ids) == 0 or not isinstance(input_ids[0], (list, tuple))
            id_lists = [list(input_ids)] if single else [list(x) for x in input_ids]
        if isinstance(sampling_params, (list, tuple)):
            if len(sampling_params) != len(id_lists):
                raise ValueError(f"got {len(sampling_params)} sampling_params for {len(id_lists)} prompts")
            params = [SamplingParams.from_dict(p) for p in sampling_params]
        else:
            params = [SamplingParams.from_dict(sampling_params)] * len(id_lists)
        pool_slots = self.runner.kv_pool.num_slots
        vocab = self.runner.vocab_size
        for ids, p in zip(id_lists, params):
            if not ids:
                raise ValueError("the prompt is empty (0 tokens)")
            if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in ids):
                raise ValueError(f"input_ids must be integers in [0, {vocab})")
            if len(ids) >= self.context_length:
                raise ValueError(
                    f"the prompt has {len(ids)} tokens, more than the context length "
                    f"({self.context_length}) allows (at most {self.context_length - 1})"
                )
            worst = len(ids) + max(min(p.max_new_tokens, self.context_length - len(ids)) - 1, 0)
            if worst > pool_slots:
                raise ValueError(
                    f"prompt + max_new_tokens needs {worst} KV slots, the pool has {pool_slots} "
                    "(raise max_total_tokens)"
                )
        return list(zip(id_lists, params)), single

    def _make_req(
        self,
        ids: list[int],
        params: SamplingParams,
        copy: int,
        logprobs: LogprobOptions,
        sink: Callable[[ReqOutput], None],
        rid: str | None,
        opts: RequestOptions,
        guides: dict[GrammarSpec, Guide],
    ) -> Req:
        if params.seed is None:
            seed = self._rng.getrandbits(31)
        else:
            seed = (params.seed + 7919 * copy) & 0x7FFFFFFF  # n > 1: distinct but reproducible streams
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        spec = spec_from_params(params)
        grammar = None if spec is None else GrammarState(guides[spec])
        return Req(
            rid=rid or uuid.uuid4().hex,
            prompt_ids=ids,
            params=params,
            seed=seed,
            logprobs=logprobs,
            sink=sink,
            max_new_tokens=min(params.max_new_tokens, self.context_length - len(ids)),
            cache_salt=opts.cache_salt,
            priority=opts.priority,
            stop_token_ids=frozenset(stop_ids),
            detokenizer=IncrementalDetokenizer(
                self.tokenizer, prompt_ids_tail=ids[-4:], skip_special_tokens=params.skip_special_tokens
            ),
            stop_matcher=StopStringMatcher(params.stop) if params.stop else None,
            grammar=grammar,
        )

    def _expand(
        self,
        prepared: Prepared,
        logprobs: LogprobOptions,
        make_sink: Callable[[int], Callable[[ReqOutput], None]],
        opts: RequestOptions,
        guides: dict[GrammarSpec, Guide],
    ) -> list[Req]:
        """One Req per (prompt, copy of n); a caller's rid names a single request, or prefixes several."""
        total = sum(params.n for _ids, params in prepared)
        reqs: list[Req] = []
        for ids, params in prepared:
            for copy in range(params.n):
                i = len(reqs)
                one_rid = member_rid(opts.rid, i, total)
                reqs.append(self._make_req(ids, params, copy, logprobs, make_sink(i), one_rid, opts, guides))
        return reqs

    # ---- the one submit path ---------------------------------------------------------------------
    def _accept(self, call: GenerateCall) -> _Submission:
        """Validate a call on the caller's thread; nothing reaches the loop unless all of it is valid."""
        self._check_alive()
        opts = RequestOptions(call.rid, call.cache_salt, call.priority)
        logprobs = LogprobOptions(bool(call.return_logprob), call.top_logprobs_num, call.logprob_start_len)
        prepared, single = self._prepare(call.prompt, call.sampling_params, call.input_ids, logprobs)
        if call.stream and (len(prepared) != 1 or prepared[0][1].n != 1):
            raise ValueError("stream=True takes a single prompt with n=1")
        return _Submission(prepared, single, logprobs, opts, bool(call.stream))

    def _submit(
        self,
        sub: _Submission,
        guides: dict[GrammarSpec, Guide],
        make_sink: Callable[[int], Callable[[ReqOutput], None]],
    ) -> list[Req]:
        reqs = self._expand(sub.prepared, sub.logprobs, make_sink, sub.opts, guides)
        self.core.submit(*reqs)
        return reqs

    @contextmanager
    def _abort_unless(self, finished: Callable[[], bool], reqs: list[Req]) -> Iterator[None]:
        """Abort `reqs` when the block is left before `finished()` (a stream closed early, a cancelled
        await), so their memory is freed instead of decoding on for nobody."""
        try:
            yield
        finally:
            if not finished():
                for req in reqs:
                    self.core.abort(req.rid)

    # ---- public API ------------------------------------------------------------------------------
    @_takes_call
    def generate(self, *args: Any, **kwargs: Any):
        """Blocking generation: a dict (one prompt) or a list of dicts; with `stream=True` an iterator of
        chunks. Arguments: see `GenerateCall`."""
        sub = self._accept(GenerateCall(*args, **kwargs))
        guides = self._compile_grammars(sub.prepared)
        if sub.stream:
            return self._stream(sub, guides)
        done: queue.SimpleQueue = queue.SimpleQueue()
        results = Results(sub.single)
        for _ in self._submit(sub, guides, results.sinks(done.put)):
            done.get()
        return results.value()

    def _stream(self, sub: _Submission, guides: dict[GrammarSpec, Guide]) -> Iterator[dict[str, Any]]:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        chunks = StreamChunks()
        reqs = self._submit(sub, guides, lambda _i: inbox.put)
        with self._abort_unless(lambda: chunks.finished, reqs):
            while not chunks.finished:
                yield chunks.chunk(inbox.get())

    @_takes_call
    async def async_generate(self, *args: Any, **kwargs: Any):
        """Awaitable form of `generate`; with `stream=True` returns an async iterator of chunks. Outputs are
        handed to the event loop thread-safely: per chunk when streaming, else once per finished request."""
        sub = self._accept(GenerateCall(*args, **kwargs))
        guides = await self._acompile_grammars(sub.prepared)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def wake(item: Any) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, item)

        if sub.stream:
            return self._astream(self._submit(sub, guides, lambda _i: wake), inbox)
        results = Results(sub.single)
        reqs = self._submit(sub, guides, results.sinks(wake))
        with self._abort_unless(lambda: results.finished, reqs):
            for _ in reqs:
                await inbox.get()
        return results.value()

    async def _astream(self, reqs: list[Req], inbox: asyncio.Queue) -> AsyncIterator[dict[str, Any]]:
        chunks = StreamChunks()
        with self._abort_unless(lambda: chunks.finished, reqs):
            while not chunks.finished:
                yield chunks.chunk(await inbox.get())

    def abort(self, rid: str) -> None:
        self.core.abort(rid)

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> str:
        """The tokenizer's chat template over `messages` (rendered in jinja's immutable sandbox by
        transformers: a template that reaches for Python internals raises jinja2's SecurityError)."""
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def flush_cache(self) -> bool:
        """Drop every cached prefix. Only when idle: returns False (and drops nothing) while requests run."""
        return self.core.call(self.core.scheduler.flush_cache)

    def get_stats(self) -> dict[str, Any]:
        """Work counters, prefix-cache hit rate and memory use (see `EngineStats`)."""

        def snapshot() -> dict[str, Any]:
            out = self.core.stats.snapshot()
            out.update(self.core.scheduler.memory_snapshot())
            out["token_usage"] = out["kv_pool_used"] / out["kv_pool_size"]
            out["cuda_graph_replays"] = self.core.runner.cuda_graph_replays
            return out

        return self.core.call(snapshot)

    def check_integrity(self) -> None:
        """Raise AssertionError unless every KV slot and request row is accounted for."""
        self.core.check_integrity()

    def idle_integrity(self) -> None:
        """Like check_integrity, and also require that nothing is queued or running, no cache node is locked
        and every slot in use belongs to the prefix cache."""

        def check() -> None:
            self.core.scheduler.check_integrity()
            sched = self.core.scheduler
            mem = sched.memory_snapshot()
            if sched.has_work() or mem["kv_pool_used"] != mem["cache_size"] or mem["cache_protected"]:
                raise AssertionError(f"engine not idle: {mem}")

        self.core.call(check)

    def _check_alive(self) -> None:
        if not self.core.alive:
            raise RuntimeError("the engine is shut down")

    def shutdown(self) -> None:
        self.core.shutdown()
        self.runner.close()
        if self._grammars is not None:
            self._grammars.shutdown()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
