"""A minimal HTTP server for the HTTP-backend tests ONLY, on 127.0.0.1 (a free port), over a real Engine.

loomlm's real server (runtime/server, runtime/protocol.py) arrives with the server issue; until then this
fixture speaks just enough of the two protocols for `RuntimeEndpoint` and `OpenAI` to be tested against a
real model: SGLang's native `GET /get_model_info` and `POST /generate` (batched input, logprobs, SSE
streaming with cumulative text), and OpenAI's `POST /v1/completions` (echo, logprobs, stream) and
`POST /v1/chat/completions` (messages through the tokenizer's chat template, logprobs, response_format,
stream with usage), with the extension parameters (`regex`, `json_schema`, `top_k`, ...) read from the
body as `extra_body` puts them there. Standard library only (`http.server`), one thread per connection,
HTTP/1.0 (every answer closes its connection). `hits` counts requests per path, `bodies` keeps the last
body per path, so tests can check what a client sent. `shift_input_logprobs=True` makes `/generate` leave
out the entry at `logprob_start_len` itself, as some SGLang versions do, so clients can be tested on both;
`incremental_streaming_output=True` streams as SGLang's server with that flag does (each event's own text
and output logprobs, `output_token_logprobs_length` the count so far) instead of the whole output so far.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# OpenAI body field -> engine sampling parameter (the extension fields come from `extra_body`).
_OPENAI_SAMPLING = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "regex": "regex",
    "json_schema": "json_schema",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
    "stop_token_ids": "stop_token_ids",
    "ignore_eos": "ignore_eos",
}
_STREAM_SLICED = ("output_token_logprobs", "output_top_logprobs")  # per chunk in the engine's stream


class LoopbackServer:
    """`with LoopbackServer(engine, api_key=None) as server:` serves at `server.url` until the block ends."""

    def __init__(
        self,
        engine: Any,
        api_key: str | None = None,
        model_name: str = "loomlm-test",
        shift_input_logprobs: bool = False,
        incremental_streaming_output: bool = False,
    ):
        self.engine = engine
        self.shift_input_logprobs = shift_input_logprobs
        self.incremental_streaming_output = incremental_streaming_output
        self.api_key = api_key
        self.model_name = model_name
        self.hits: collections.Counter = collections.Counter()
        self.bodies: dict[str, Any] = {}
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="loopback-server", daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, path: str, body: Any) -> None:
        with self._lock:
            self.hits[path] += 1
            self.bodies[path] = body

    # ---- SGLang native -----------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        path = str(self.engine.runner.model_path)
        return {"model_path": path, "tokenizer_path": path, "is_generation": True}

    def native_meta(self, meta: dict[str, Any], with_text: bool) -> dict[str, Any]:
        meta = dict(meta)
        if self.shift_input_logprobs and meta.get("input_token_logprobs"):
            meta["input_token_logprobs"] = meta["input_token_logprobs"][1:]
        if not with_text:
            return meta
        decode = self.engine.tokenizer.decode
        for key in ("input_token_logprobs", "output_token_logprobs"):
            if key in meta:
                meta[key] = [(lp, tid, decode([tid])) for lp, tid, *_ in meta[key]]
        return meta

    def generate_args(self, body: dict[str, Any]) -> dict[str, Any]:
        args = {
            "sampling_params": body.get("sampling_params") or {},
            "return_logprob": bool(body.get("return_logprob", False)),
            "top_logprobs_num": body.get("top_logprobs_num") or 0,
            "logprob_start_len": body.get("logprob_start_len", -1),
        }
        if body.get("input_ids") is not None:
            args["input_ids"] = body["input_ids"]
        else:
            args["prompt"] = body.get("text")
        return args

    # ---- OpenAI ------------------------------------------------------------------------------
    def openai_sampling(self, body: dict[str, Any], default_max: int) -> dict[str, Any]:
        params = {"max_new_tokens": default_max}
        for field, name in _OPENAI_SAMPLING.items():
            if body.get(field) is not None:
                params[name] = body[field]
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            params["json_schema"] = json.dumps(fmt["json_schema"]["schema"])
        elif fmt.get("type") == "json_object":
            params["json_schema"] = json.dumps({"type": "object"})
        return params

    def usage(self, metas: list[dict[str, Any]]) -> dict[str, int]:
        prompt = sum(m["prompt_tokens"] for m in metas)
        completion = sum(m["completion_tokens"] for m in metas)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion_logprobs(
        self, prompt: str, offsets: list[tuple[int, int]] | None, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """OpenAI's legacy logprobs object; the prompt's tokens too when echoed (`offsets` given)."""
        decode = self.engine.tokenizer.decode
        tokens, values, tops, starts = [], [], [], []

        def add(entry: tuple, top: list, start: int) -> None:
            tokens.append(decode([entry[1]]))
            values.append(entry[0])
            tops.append(None if entry[0] is None else {decode([t[1]]): t[0] for t in top})
            starts.append(start)

        if offsets is not None:
            for entry, top, (start, _end) in zip(
                meta["input_token_logprobs"], meta.get("input_top_logprobs") or _empty_rows(offsets), offsets
            ):
                add(entry, top, start)
        position = len(prompt) if offsets is not None else 0
        for entry, top in zip(
            meta["output_token_logprobs"], meta.get("output_top_logprobs") or _empty_rows(meta["output_token_logprobs"])
        ):
            add(entry, top, position)
            position += len(tokens[-1])
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": starts}

    def chat_logprobs(self, meta: dict[str, Any]) -> dict[str, Any]:
        decode = self.engine.tokenizer.decode
        rows = meta.get("output_top_logprobs") or _empty_rows(meta["output_token_logprobs"])
        return {
            "content": [
                {
                    "token": decode([tid]),
                    "logprob": lp,
                    "bytes": None,
                    "top_logprobs": [{"token": decode([t[1]]), "logprob": t[0], "bytes": None} for t in top],
                }
                for (lp, tid, *_), top in zip(meta["output_token_logprobs"], rows)
            ]
        }


def _empty_rows(items: list) -> list[list]:
    return [[] for _ in items]


def _finish(meta: dict[str, Any]) -> str | None:
    reason = meta.get("finish_reason")
    return None if reason is None else reason["type"]


class _Handler(BaseHTTPRequestHandler):
    app: LoopbackServer

    def log_message(self, *args: Any) -> None:  # quiet: the tests' output stays readable
        pass

    # ---- plumbing ----------------------------------------------------------------------------
    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

    def _event(self, payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def _authorized(self) -> bool:
        key = self.app.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send_json(401, {"error": {"message": "invalid or missing API key"}})
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        self.app.record(self.path, None)
        if self.path == "/get_model_info":
            self._send_json(200, self.app.model_info())
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.app.record(self.path, body)
        routes = {"/generate": self._generate, "/v1/completions": self._completions, "/v1/chat/completions": self._chat}
        if self.path not in routes:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            routes[self.path](body)
        except ValueError as exc:  # the engine's request validation (before any byte was sent)
            self._send_json(400, {"error": {"message": str(exc)}})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away mid-stream; the engine aborted its request
        except Exception as exc:  # pragma: no cover (a bug in the engine or here)
            self._send_json(500, {"error": {"message": f"{type(exc).__name__}: {exc}"}})

    def _stream(self, chunks, make_event, opening: Any = None, closing=None) -> None:
        """Events: `opening`, one per engine increment (None: skipped), `closing()`, then [DONE].
        `chunks` was made before the headers go out, so a request the engine refuses still gets a 400;
        closing it aborts an unfinished request (the client went away)."""
        self._start_events()
        try:
            if opening is not None:
                self._event(opening)
            for chunk in chunks:
                event = make_event(chunk)
                if event is not None:
                    self._event(event)
        finally:
            chunks.close()
        if closing is not None and (event := closing()) is not None:
            self._event(event)
        self._event("[DONE]")

    def _openai_stream(
        self,
        body: dict[str, Any],
        head: dict[str, Any],
        prompt: str,
        params: dict[str, Any],
        piece,
        opening: Any = None,
    ) -> None:
        """OpenAI's stream: a chunk per text increment (`piece(text)` is its choice's text field), the
        finish reason on the last, then the usage when `stream_options.include_usage` asks for it."""
        metas: list[dict[str, Any]] = []

        def event(chunk: dict[str, Any]) -> dict[str, Any] | None:
            metas.append(chunk["meta_info"])
            if not (chunk["text"] or chunk["finished"]):
                return None
            finish = _finish(chunk["meta_info"]) if chunk["finished"] else None
            return {
                **head,
                "choices": [{"index": 0, **piece(chunk["text"]), "logprobs": None, "finish_reason": finish}],
            }

        def usage() -> dict[str, Any] | None:
            if not (body.get("stream_options") or {}).get("include_usage"):
                return None
            return {**head, "choices": [], "usage": self.app.usage(metas[-1:])}

        self._stream(self.app.engine.generate(prompt, params, stream=True), event, opening, usage)

    # ---- routes --------------------------------------------------------------------------------
    def _generate(self, body: dict[str, Any]) -> None:
        app = self.app
        args = app.generate_args(body)
        with_text = bool(body.get("return_text_in_logprobs"))
        if body.get("stream"):
            text, logprobs = "", {key: [] for key in _STREAM_SLICED}

            def event(chunk: dict[str, Any]) -> dict[str, Any]:
                # The engine's chunks are incremental (their own text and output logprobs); SGLang's
                # default server sends the whole text and logprobs so far, its incremental mode passes them on.
                nonlocal text
                text += chunk["text"]
                meta = dict(chunk["meta_info"])
                if app.incremental_streaming_output:
                    return {"text": chunk["text"], "meta_info": app.native_meta(meta, with_text)}
                for key in _STREAM_SLICED:
                    if key in meta:
                        logprobs[key] += meta[key]
                        meta[key] = list(logprobs[key])
                return {"text": text, "meta_info": app.native_meta(meta, with_text)}

            self._stream(app.engine.generate(**args, stream=True), event)
            return
        out = app.engine.generate(**args)
        outs = out if isinstance(out, list) else [out]
        answer = [
            {"text": o["text"], "output_ids": o["output_ids"], "meta_info": app.native_meta(o["meta_info"], with_text)}
            for o in outs
        ]
        self._send_json(200, answer if isinstance(out, list) else answer[0])

    def _completions(self, body: dict[str, Any]) -> None:
        app, tokenizer = self.app, self.app.engine.tokenizer
        prompts = [body["prompt"]] if isinstance(body.get("prompt"), str) else list(body.get("prompt") or [])
        params = app.openai_sampling(body, default_max=16)
        echo, top = bool(body.get("echo")), body.get("logprobs")
        want_logprobs = top is not None
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": app.model_name,
        }
        if body.get("stream"):
            if len(prompts) != 1:
                raise ValueError("stream takes one prompt")
            self._openai_stream(body, head, prompts[0], params, lambda text: {"text": text})
            return
        encoded = [tokenizer(p, return_offsets_mapping=True) for p in prompts]
        outs = app.engine.generate(
            input_ids=[list(e["input_ids"]) for e in encoded],
            sampling_params=[params] * len(prompts),
            return_logprob=want_logprobs,
            top_logprobs_num=top or 0,
            logprob_start_len=0 if echo else -1,
        )
        choices = []
        for i, (prompt, enc, out) in enumerate(zip(prompts, encoded, outs)):
            offsets = enc["offset_mapping"] if echo else None
            logprobs = app.completion_logprobs(prompt, offsets, out["meta_info"]) if want_logprobs else None
            choices.append(
                {
                    "index": i,
                    "text": (prompt if echo else "") + out["text"],
                    "logprobs": logprobs,
                    "finish_reason": _finish(out["meta_info"]),
                }
            )
        self._send_json(200, {**head, "choices": choices, "usage": app.usage([o["meta_info"] for o in outs])})

    def _chat(self, body: dict[str, Any]) -> None:
        app = self.app
        prompt = app.engine.apply_chat_template(body["messages"], add_generation_prompt=True)
        params = app.openai_sampling(body, default_max=128)
        logprobs, top = bool(body.get("logprobs")), body.get("top_logprobs") or 0
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": app.model_name,
        }
        if body.get("stream"):
            opening = {
                **head,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            }
            self._openai_stream(body, head, prompt, params, lambda text: {"delta": {"content": text}}, opening)
            return
        out = app.engine.generate(prompt, params, return_logprob=logprobs, top_logprobs_num=top)
        meta = out["meta_info"]
        self._send_json(
            200,
            {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": out["text"]},
                        "logprobs": app.chat_logprobs(meta) if logprobs else None,
                        "finish_reason": _finish(meta),
                    }
                ],
                "usage": app.usage([meta]),
            },
        )
