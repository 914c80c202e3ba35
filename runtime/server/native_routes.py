"""SGLang's native API: `/generate` and the service routes (health, model and server info, load,
cache flush, abort, tokenize, detokenize).

`POST /generate` takes SGLang's body (`text` or `input_ids`, one or a list; `sampling_params`, one or
one per prompt; `return_logprob`, `top_logprobs_num`, `logprob_start_len`, `return_text_in_logprobs`,
`rid`, `stream`) and answers a dict or a list of `{"text", "output_ids", "meta_info"}`; streamed, each
event carries the text, ids and output logprobs so far, as SGLang's server does by default, or only its
own with `incremental_streaming_output` (SGLang's flag; `output_token_logprobs_length` then counts the
logprobs sent so far).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from loomlm.runtime.engine_outputs import STREAM_SLICED_KEYS
from loomlm.runtime.server.disconnect import unless_disconnected
from loomlm.runtime.server.errors import ApiError, error_body
from loomlm.runtime.server.router_fields import RouterFields, request_id
from loomlm.runtime.server.state import ServerState
from loomlm.runtime.server.streaming import sse


class GenerateRequest(RouterFields):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None  # the router names the model; one engine serves one
    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    return_logprob: bool = False
    top_logprobs_num: int = Field(default=0, ge=0, le=20)
    logprob_start_len: int = -1
    return_text_in_logprobs: bool = False
    rid: str | None = None
    stream: bool = False


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[int]


class AbortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rid: str


# Hugging Face's class name of each architecture loomlm runs (`/model_info`'s `architectures`).
_HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def native_router(state: ServerState) -> APIRouter:
    router = APIRouter()
    engine = state.engine

    def with_text(meta: dict[str, Any], wanted: bool) -> dict[str, Any]:
        if not wanted:
            return meta
        decode = engine.tokenizer.decode
        keys = [k for k in ("input_token_logprobs", "output_token_logprobs") if k in meta]
        return {**meta, **{k: [(lp, tid, decode([tid])) for lp, tid, *_ in meta[k]] for k in keys}}

    @router.get("/health")
    async def health() -> Response:
        return Response(status_code=503 if state.draining else 200)

    @router.get("/health_generate")
    async def health_generate() -> Response:
        await engine.async_generate(
            input_ids=[engine.tokenizer.bos_token_id or 0], sampling_params={"max_new_tokens": 1}
        )
        return Response(status_code=200)

    @router.get("/model_info")
    @router.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        model_config = engine.runner.model_config
        return {
            "model_path": state.model_path,
            "tokenizer_path": state.model_path,
            "is_generation": True,
            "model_type": model_config.architecture,
            "architectures": [_HF_CLASSES.get(model_config.architecture, "LlamaForCausalLM")],
        }

    @router.get("/server_info")
    @router.get("/get_server_info")
    async def server_info() -> dict[str, Any]:
        config = {k: v for k, v in vars(engine.config).items()} if hasattr(engine, "config") else {}
        server = {k: v for k, v in vars(state.config).items() if k != "api_key"}
        # What the router reads (model_path, served_model_name, tp_size, dp_size): the resolved values,
        # not the flags' defaults.
        resolved = {
            "model_path": state.model_path,
            "served_model_name": state.model_name,
            "tp_size": getattr(engine.config, "tp_size", 1),
            "dp_size": 1,
            "max_total_tokens": engine.runner.kv_pool.num_slots,
            "attention_backend": engine.runner.attention_backend,
            "context_length": engine.context_length,
            "version": _version(),
        }
        return {**config, **server, **resolved}

    @router.get("/get_load")
    async def get_load() -> list[dict[str, Any]]:
        """SGLang's shape, one entry per data-parallel rank (one here): the router's power-of-two policy
        sums `num_tokens` (KV slots in use); the engine's counters ride along."""
        stats = await run_in_threadpool(engine.get_stats)
        running, waiting = stats["running_requests"], stats["waiting_requests"]
        load = {
            "dp_rank": 0,
            "num_reqs": running + waiting,
            "num_running_reqs": running,
            "num_waiting_reqs": waiting,
            "num_tokens": stats["kv_pool_used"] - stats["cache_evictable"],  # held by running requests
        }
        return [{**load, **stats}]

    @router.post("/flush_cache")
    async def flush_cache() -> Response:
        flushed = await run_in_threadpool(engine.flush_cache)
        if not flushed:
            raise ApiError(400, "the cache is flushed only when no request is running")
        return Response(content="Cache flushed.\n", status_code=200)

    @router.post("/abort_request")
    async def abort_request(req: AbortRequest) -> Response:
        engine.abort(req.rid)
        return Response(status_code=200)

    @router.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        tokenizer = engine.tokenizer
        ids = await run_in_threadpool(
            lambda: list(tokenizer(req.text, add_special_tokens=req.add_special_tokens)["input_ids"])
        )
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.context_length}

    @router.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict[str, Any]:
        vocab = engine.runner.vocab_size
        if any(t < 0 or t >= vocab for t in req.tokens):
            raise ApiError(400, f"tokens must be in [0, {vocab})", "tokens")
        return {"text": await run_in_threadpool(engine.tokenizer.decode, req.tokens)}

    @router.post("/generate", response_model=None)
    async def generate(req: GenerateRequest, request: Request) -> Any:
        started = time.perf_counter()
        if (req.text is None) == (req.input_ids is None):
            raise ApiError(400, "give exactly one of text and input_ids")
        many = isinstance(req.text, list) or bool(req.input_ids and isinstance(req.input_ids[0], list))
        prompts = len(req.text or req.input_ids or []) if many else 1
        per_prompt = req.sampling_params if isinstance(req.sampling_params, list) else [req.sampling_params or {}]
        for params in per_prompt:
            state.check_fanout(prompts, params.get("n", 1), "sampling_params.n")
        if req.text is not None:
            texts = [req.text] if isinstance(req.text, str) else req.text
            ids = await state.encode(texts)
            input_ids: Any = ids[0] if isinstance(req.text, str) else ids
        else:
            input_ids = req.input_ids
        args = {
            "input_ids": input_ids,
            "sampling_params": req.sampling_params,
            "return_logprob": req.return_logprob,
            "top_logprobs_num": req.top_logprobs_num,
            "logprob_start_len": req.logprob_start_len,
            "rid": request_id(req.rid, request.headers),
        }
        if req.stream:
            chunks = await engine.async_generate(**args, stream=True)
            events = _events(
                chunks,
                lambda m: with_text(m, req.return_text_in_logprobs),
                state.config.incremental_streaming_output,
                lambda meta, times: state.metrics.request_done(meta, started, times),
            )
            return StreamingResponse(events, media_type="text/event-stream")
        out = await unless_disconnected(request, engine.async_generate(**args))
        outs = out if isinstance(out, list) else [out]
        for one in outs:
            state.metrics.request_done(one["meta_info"], started)
        answer = [{**o, "meta_info": with_text(o["meta_info"], req.return_text_in_logprobs)} for o in outs]
        return answer if isinstance(out, list) else answer[0]

    return router


async def _events(
    chunks: AsyncIterator[dict[str, Any]], finish_meta: Any, incremental: bool, done: Any
) -> AsyncIterator[str]:
    """The events of a streamed /generate (see the module docstring); `done(meta, chunk times)` when
    it finishes."""
    text, ids, sliced = "", [], {k: [] for k in STREAM_SLICED_KEYS}
    times: list[float] = []
    try:
        async for chunk in chunks:
            if chunk["output_ids"]:
                times.append(time.perf_counter())
            if chunk["finished"]:
                done(chunk["meta_info"], times)
            if incremental:
                yield sse(
                    {
                        "text": chunk["text"],
                        "output_ids": chunk["output_ids"],
                        "meta_info": finish_meta(chunk["meta_info"]),
                    }
                )
                continue
            text += chunk["text"]
            ids += chunk["output_ids"]
            meta = dict(chunk["meta_info"])
            for key in STREAM_SLICED_KEYS:
                if key in meta:
                    sliced[key] += meta[key]
                    meta[key] = list(sliced[key])
            yield sse({"text": text, "output_ids": list(ids), "meta_info": finish_meta(meta)})
    except ValueError as exc:
        yield sse(error_body(400, str(exc)))
    yield sse("[DONE]")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loomlm")
    except PackageNotFoundError:  # pragma: no cover - a source tree without installation
        return "0"
