"""OpenAI's API: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`.

Each choice is one engine request (`n` copies share the prompt and its cached prefix). Streams are SSE:
a chunk per text increment of a choice (chat: a first chunk with the assistant role), the finish reason
on its last, one usage chunk with empty `choices` when `stream_options.include_usage` asks, then
`data: [DONE]`; an error after the headers went out is an `{"error": ...}` event before `[DONE]`.
Request validation and grammar compilation finish before the response starts, so a bad request is a
400, never a broken stream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from loomlm.runtime.engine_outputs import member_rid
from loomlm.runtime.server import openai_format as fmt
from loomlm.runtime.server import tool_calls as tc
from loomlm.runtime.server.disconnect import unless_disconnected
from loomlm.runtime.server.errors import ApiError, error_body
from loomlm.runtime.server.openai_protocol import ChatCompletionRequest, CompletionRequest, sampling_params
from loomlm.runtime.server.router_fields import request_id
from loomlm.runtime.server.state import ServerState
from loomlm.runtime.server.streaming import SEED_STRIDE, merged, sse
from loomlm.runtime.server.tool_call_parser import ToolCallParser


def openai_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "loomlm"}
        return {
            "object": "list",
            "data": [{**card, "root": state.model_path, "max_model_len": state.engine.context_length}],
        }

    @router.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        started = time.perf_counter()
        params = sampling_params(req, "completion")
        prompt = req.prompt
        state.check_fanout(
            len(prompt) if isinstance(prompt, list) and not isinstance(prompt[0], int) else 1, req.n, "n"
        )
        texts, id_lists = await _prompts(state, req.prompt)
        logprobs = {
            "return_logprob": req.logprobs is not None,
            "top_logprobs_num": req.logprobs or 0,
            "logprob_start_len": 0 if req.echo and req.logprobs is not None else -1,
        }
        head = fmt.head("cmpl", "text_completion", state.model_name)
        decode = state.engine.tokenizer.decode

        def choice(i: int, out: dict[str, Any], prompt_i: int) -> dict[str, Any]:
            echoed = texts[prompt_i] if req.echo else None
            return {
                "index": i,
                "text": (echoed or "") + out["text"],
                "logprobs": None if req.logprobs is None else fmt.completion_logprobs(decode, out["meta_info"], echoed),
                "finish_reason": fmt.finish_reason(out["meta_info"]),
            }

        if req.stream:
            streams = await _streams(state, id_lists, params, req.n, logprobs, request_id(req.rid, request.headers))

            def piece(i: int, chunk: dict[str, Any], first: bool) -> dict[str, Any]:
                echoed = texts[i // req.n] if req.echo and first else ""
                meta = chunk["meta_info"]
                lp = None if req.logprobs is None else fmt.completion_logprobs(decode, meta, None)
                return {"text": echoed + chunk["text"], "logprobs": lp}

            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _stream_events(state, started, head, streams, piece, req.n, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        outs = await _generate(
            state, request, started, id_lists, params, logprobs, request_id(req.rid, request.headers)
        )
        choices = [choice(i, out, i // req.n) for i, out in enumerate(outs)]
        return {
            **head,
            "choices": choices,
            "usage": fmt.usage([o["meta_info"] for o in outs[:: req.n]], [o["meta_info"] for o in outs]),
        }

    @router.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        started = time.perf_counter()
        params = sampling_params(req, "chat")
        calling = bool(req.tools) and req.tool_choice != "none"
        form = state.tool_format
        native = calling and state.template_renders_tools
        messages = tc.history_messages(req.messages, form, native)
        if calling:
            given = [k for k in ("regex", "ebnf", "json_schema", "structural_tag") if k in params]
            if given:
                raise ApiError(
                    400, f"tools cannot be combined with {given[0]} (the tools constrain the output)", "tools"
                )
            functions, required = tc.chosen_functions(req.tools, req.tool_choice)
            params["structural_tag"] = tc.tool_constraint(
                form, functions, required, req.parallel_tool_calls is not False
            )
            if not native:
                messages = tc.with_tools_prompt(messages, tc.tools_prompt(req.tools, form))
        prompt = await state.chat_prompt(messages, req.tools if native else None)
        id_lists = await state.encode([prompt])
        logprobs = {"return_logprob": req.logprobs, "top_logprobs_num": req.top_logprobs or 0, "logprob_start_len": -1}
        head = fmt.head("chatcmpl", "chat.completion", state.model_name)
        decode = state.engine.tokenizer.decode
        if req.stream:
            streams = await _streams(state, id_lists, params, req.n, logprobs, request_id(req.rid, request.headers))

            parsers: dict[int, ToolCallParser] = {}

            def piece(i: int, chunk: dict[str, Any], first: bool) -> dict[str, Any]:
                text, out = chunk["text"], {}
                if calling:
                    parser = parsers.setdefault(i, ToolCallParser(form))
                    text, calls = parser.feed(text)
                    if chunk["finished"]:
                        rest, last = parser.finish()
                        text, calls = text + rest, calls + last
                        if parser.calls and fmt.finish_reason(chunk["meta_info"]) != "length":
                            out["finish_reason"] = "tool_calls"
                    if calls:
                        out["tool_calls"] = calls
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                if "tool_calls" in out:
                    delta["tool_calls"] = out.pop("tool_calls")
                lp = fmt.chat_logprobs(decode, chunk["meta_info"]) if req.logprobs else None
                return {"delta": delta, "logprobs": lp, **out}

            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunk_head = {**head, "object": "chat.completion.chunk"}
            events = _stream_events(state, started, chunk_head, streams, piece, req.n, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        outs = await _generate(
            state, request, started, id_lists, params, logprobs, request_id(req.rid, request.headers)
        )
        choices = []
        for i, out in enumerate(outs):
            message: dict[str, Any] = {"role": "assistant", "content": out["text"]}
            finish = fmt.finish_reason(out["meta_info"])
            if calling:
                parser = ToolCallParser(form)
                content, _ = parser.feed(out["text"])
                content = (content + parser.finish()[0]).strip(form.separators)
                message["content"] = content or None
                if parser.calls:
                    message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in parser.calls]
                    finish = "tool_calls" if finish != "length" else finish
            logprobs_out = fmt.chat_logprobs(decode, out["meta_info"]) if req.logprobs else None
            choices.append({"index": i, "message": message, "logprobs": logprobs_out, "finish_reason": finish})
        return {**head, "choices": choices, "usage": fmt.usage([outs[0]["meta_info"]], [o["meta_info"] for o in outs])}

    return router


async def _prompts(state: ServerState, prompt: Any) -> tuple[list[str | None], list[list[int]]]:
    """(text or None, token ids) of each prompt of a completions request."""
    if isinstance(prompt, str):
        return [prompt], await state.encode([prompt])
    if all(isinstance(p, str) for p in prompt):
        return list(prompt), await state.encode(list(prompt))
    if all(isinstance(p, int) for p in prompt):
        return [None], [list(prompt)]
    return [None] * len(prompt), [list(p) for p in prompt]


async def _generate(
    state: ServerState,
    request: Request,
    started: float,
    id_lists: list[list[int]],
    params: dict[str, Any],
    logprobs: dict,
    rid: str | None,
) -> list[dict]:
    work = state.engine.async_generate(input_ids=id_lists, sampling_params=params, rid=rid, **logprobs)
    out = await unless_disconnected(request, work)
    outs = out if isinstance(out, list) else [out]
    for one in outs:
        state.metrics.request_done(one["meta_info"], started)
    return outs


async def _streams(
    state: ServerState,
    id_lists: list[list[int]],
    params: dict[str, Any],
    n: int,
    logprobs: dict,
    rid: str | None,
) -> list:
    """One engine stream per choice (prompt-major, as a non-streamed request orders them), each copy
    seeded as the engine seeds the copies of one request and named as the engine names them (`rid`,
    or `rid-i` for several). All are validated and compiled before the first is started: a refusal
    leaves nothing running."""
    streams = []
    one = {k: v for k, v in params.items() if k != "n"}
    total = len(id_lists) * n
    try:
        for ids in id_lists:
            for copy in range(n):
                one_rid = member_rid(rid, len(streams), total)
                seeded = (
                    one if one.get("seed") is None else {**one, "seed": (one["seed"] + SEED_STRIDE * copy) & 0x7FFFFFFF}
                )
                streams.append(
                    await state.engine.async_generate(
                        input_ids=ids, sampling_params=seeded, stream=True, rid=one_rid, **logprobs
                    )
                )
    except BaseException:
        for stream in streams:
            await stream.aclose()
        raise
    return streams


async def _stream_events(
    state: ServerState, arrived: float, head: dict, streams: list, piece: Any, n: int, include_usage: bool
) -> AsyncIterator[str]:
    """SSE events of OpenAI's stream over the choices' engine streams (see the module docstring)."""
    started: set[int] = set()
    last: dict[int, dict[str, Any]] = {}
    times: dict[int, list[float]] = {}
    try:
        async for i, chunk in merged(streams):
            last[i] = chunk["meta_info"]
            if chunk["output_ids"]:
                times.setdefault(i, []).append(time.perf_counter())
            if chunk["finished"]:
                state.metrics.request_done(chunk["meta_info"], arrived, times.get(i))
            finish = fmt.finish_reason(chunk["meta_info"]) if chunk["finished"] else None
            if not (chunk["text"] or finish or i not in started):
                continue
            body = piece(i, chunk, i not in started)
            finish = body.pop("finish_reason", finish) if finish is not None else finish
            started.add(i)
            yield sse({**head, "choices": [{"index": i, **body, "finish_reason": finish}]})
        if include_usage:
            metas = [last[i] for i in sorted(last)]
            yield sse({**head, "choices": [], "usage": fmt.usage(metas[::n], metas)})
    except ApiError as exc:
        yield sse(exc.body())
    except ValueError as exc:
        yield sse(error_body(400, str(exc)))
    yield sse("[DONE]")
