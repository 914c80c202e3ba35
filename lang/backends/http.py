"""`RuntimeEndpoint`: programs run against a server speaking SGLang's native HTTP protocol.

The protocol, as SGLang's server defines it (and loomlm's server will):

- `GET /get_model_info` -> `{"model_path", "tokenizer_path", "is_generation", ...}`.
- `POST /generate` with `{"text": str | [str], "input_ids"?: [int] | [[int]], "sampling_params": {...} | [...],
  "return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs", "stream"}`. The
  answer is `{"text", "output_ids", "meta_info": {"prompt_tokens", "completion_tokens", "cached_tokens",
  "finish_reason", "input_token_logprobs", ...}}`, a list of those for a list input. Logprob entries are
  `[logprob, token_id, token_text_or_null]`.
- `"stream": true` answers with server-sent events `data: {json}\\n\\n`, ending with `data: [DONE]`. Each
  event's `text` is the whole output so far (SGLang's default); the increments are computed here. A
  server set to send increments instead is recognised when an event does not extend the text so far, and
  output logprobs sent per chunk (SGLang's incremental streaming: fewer than the event's
  `output_token_logprobs_length`) are gathered, so the meta info seen is always the whole so far.
  An event `{"error": {"message"}}` reports a failure after the stream began.
- Errors: `{"error": {"message": ...}}` with HTTP 400 (SGLang), or FastAPI's `{"detail": ...}`.

Errors become Python exceptions carrying the server's message: HTTP 4xx -> `ValueError` (the request
was wrong: a bad parameter, prompt or API key), 5xx -> `RuntimeError`, no connection -> `ConnectionError`
naming the URL. Only the standard library is used (`urllib.request`; one connection per request).

The chat template comes from the model's tokenizer when it can be loaded here without downloading
(`tokenizer_path` / `model_path` of the model info: a local file or directory, or the Hugging Face cache);
otherwise `ChatTemplate.plain()`. `select` then scores exactly as the in-process backend does; see
`select` for how it scores without a local tokenizer.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from loomlm.lang.backends.base import Backend, GenResult, accumulate_stream_meta
from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.choices import (
    ChoicesDecision,
    ChoicesMethod,
    check_select_args,
    common_prefix_len,
    decide,
    score_select,
)
from loomlm.lang.ir import LogprobRequest

_SCORE_ONLY = {"max_new_tokens": 0, "temperature": 0.0}
# Without a local tokenizer, select compares this many trailing prompt tokens with the start of each
# `prompt + choice` to find where the choice's tokens begin (a choice can merge with at most a few).
_TAIL_TOKENS = 8


def _server_message(raw: bytes) -> str:
    """The human-readable message inside an error body (SGLang, OpenAI or FastAPI shape), else the body."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text or "(empty response)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if key in body:
                return body[key] if isinstance(body[key], str) else json.dumps(body[key])
    return text


def _as_tuples(meta: dict[str, Any]) -> dict[str, Any]:
    """Logprob entries as tuples, as the in-process backend returns them (JSON made them lists)."""
    meta = dict(meta)
    for key in ("input_token_logprobs", "output_token_logprobs"):
        if isinstance(meta.get(key), list):
            meta[key] = [tuple(e) for e in meta[key]]
    for key in ("input_top_logprobs", "output_top_logprobs"):
        if isinstance(meta.get(key), list):
            meta[key] = [[tuple(e) for e in row] if row else row for row in meta[key]]
    return meta


def _tail(entries: list[tuple], ids: Sequence[int]) -> list[tuple]:
    """The entries of the last `len(ids)` positions. Input logprobs always run to the prompt's end, but
    servers differ on whether the entry at `logprob_start_len` itself (None at position 0) is included,
    so entries are aligned from the end; a missing first-position entry is filled with None."""
    if len(entries) < len(ids):
        entries = [(None, i, None) for i in ids[: len(ids) - len(entries)]] + list(entries)
    return list(entries[len(entries) - len(ids) :])


def _load_local_tokenizer(model_info: dict[str, Any]) -> Any | None:
    """The tokenizer the model info names, if transformers can load it from this machine; else None."""
    for key in ("tokenizer_path", "model_path"):
        path = model_info.get(key)
        if not isinstance(path, str) or not path:
            continue
        try:
            from transformers import AutoTokenizer

            if os.path.isfile(path):  # a GGUF file: transformers rebuilds the tokenizer from its metadata
                return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
            if os.path.isdir(path):
                return AutoTokenizer.from_pretrained(path)
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception:  # not loadable here (another machine's path, not cached, no transformers)
            continue
    return None


class RuntimeEndpoint(Backend):
    """A client of an SGLang-native-protocol server: `RuntimeEndpoint("http://host:30000", api_key=None)`.

    `tokenizer`: "auto" (load the server's tokenizer locally when possible), None (never: the chat
    template is plain and select works from the server's answers alone), or a tokenizer object.
    `chat_template`: overrides the template read off the tokenizer. `timeout`: seconds per socket
    operation (a long generation streams or answers within it)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | None = 600.0,
        chat_template: ChatTemplate | None = None,
        tokenizer: Any = "auto",
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.model_info: dict[str, Any] = self._request("GET", "/get_model_info")
        if tokenizer == "auto":
            tokenizer = _load_local_tokenizer(self.model_info)
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads
        if chat_template is None:
            chat_template = ChatTemplate.plain() if tokenizer is None else ChatTemplate.from_tokenizer(tokenizer)
        self.chat_template = chat_template

    def model_name(self) -> str:
        return str(self.model_info.get("model_path", self.base_url))

    def flush_cache(self) -> bool:
        with self._open("POST", "/flush_cache", {}) as response:  # SGLang answers with plain text
            response.read()
        return True

    def get_server_info(self) -> dict[str, Any]:
        return self._request("GET", "/get_server_info")

    # ---- HTTP --------------------------------------------------------------------------------
    def _open(self, method: str, path: str, body: Any = None):
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method, headers=self._headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            message = _server_message(exc.read())
            kind = ValueError if exc.code < 500 else RuntimeError
            raise kind(f"{method} {url} failed with HTTP {exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise TimeoutError(f"no answer from {url} within {self.timeout} s") from None
            raise ConnectionError(f"cannot reach the server at {url}: {exc.reason}") from None
        except TimeoutError:
            raise TimeoutError(f"no answer from {url} within {self.timeout} s") from None
        except ConnectionError as exc:  # e.g. the server closed the connection without answering
            raise ConnectionError(f"lost the connection to {url}: {exc}") from None

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise RuntimeError(f"{method} {self.base_url + path} answered with non-JSON text: {raw[:200]!r}") from None

    def _events(self, response) -> Iterator[dict[str, Any]]:
        """The JSON events of a server-sent-event stream, until `data: [DONE]`."""
        data: list[str] = []
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
                continue
            if line or not data:  # comments, other fields, stray blank lines
                continue
            payload, data = "\n".join(data), []
            if payload == "[DONE]":
                return
            event = json.loads(payload)
            if isinstance(event, dict) and "error" in event:
                raise ValueError(f"{self.base_url}/generate failed: {_server_message(payload.encode())}")
            yield event
        raise ConnectionError(f"the stream from {self.base_url}/generate ended before data: [DONE]")

    # ---- generation --------------------------------------------------------------------------
    def _payload(self, prompt: str, sampling: dict[str, Any], lp: LogprobRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"text": prompt, "sampling_params": sampling}
        if lp.return_logprob:
            body.update(
                return_logprob=True,
                logprob_start_len=lp.logprob_start_len,
                top_logprobs_num=lp.top_logprobs_num,
                return_text_in_logprobs=lp.return_text_in_logprobs,
            )
        return body

    def _meta(self, meta: dict[str, Any], lp: LogprobRequest) -> dict[str, Any]:
        meta = _as_tuples(meta)
        if not (lp.return_logprob and lp.return_text_in_logprobs) or self.tokenizer is None:
            return meta
        for key in ("input_token_logprobs", "output_token_logprobs"):  # a server that left the texts out
            entries = meta.get(key) or []
            if entries and any(len(e) < 3 or e[2] is None for e in entries):
                with self._tokenizer_lock:
                    texts = self.tokenizer.batch_decode([[e[1]] for e in entries])
                meta[key] = [(e[0], e[1], t) for e, t in zip(entries, texts)]
        return meta

    def generate(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> GenResult:
        out = self._request("POST", "/generate", self._payload(prompt, sampling, logprobs))
        return GenResult(out["text"], self._meta(out.get("meta_info", {}), logprobs))

    def generate_stream(self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest) -> Iterator[GenResult]:
        body = {**self._payload(prompt, sampling, logprobs), "stream": True}
        seen, meta = "", None
        with self._open("POST", "/generate", body) as response:  # closing it early aborts the request
            for event in self._events(response):
                text = event.get("text", "")
                if text.startswith(seen):  # cumulative text (SGLang's default)
                    delta, seen = text[len(seen) :], text
                else:  # a server that streams increments
                    delta, seen = text, seen + text
                meta = accumulate_stream_meta(meta, _as_tuples(event.get("meta_info", {})))
                yield GenResult(delta, self._meta(meta, logprobs))

    def prefill(self, prompt: str) -> None:
        if prompt:
            self._request("POST", "/generate", {"text": prompt, "sampling_params": _SCORE_ONLY})

    # ---- select ------------------------------------------------------------------------------
    def select(self, prompt: str, choices: Sequence[str], method: ChoicesMethod) -> ChoicesDecision:
        """Scores as `LocalBackend.select` does: the prompt is prefilled once (one request), then every
        `prompt + choice` is scored in one batched request with `return_logprob` from `logprob_start_len`.
        A choice's tokens are those where the tokenization of `prompt + choice` departs from the prompt's.

        With a local tokenizer the requests carry `input_ids`, so the split is the in-process backend's
        exactly (logprobs are asked from one position before the earliest choice token and aligned from
        the end, since servers differ on whether the entry at `logprob_start_len` itself comes back).
        Without one, the prompt itself joins the batch and every request returns the token ids of the
        last `_TAIL_TOKENS` prompt positions (from `prompt_tokens - _TAIL_TOKENS`, learnt from the
        prefill); comparing ids there finds where each choice departs, including a choice merged with
        the prompt's last characters (SGLang's "token healing" case; SGLang itself instead compares the
        first token's text with the prompt's end). Either way the unconditional method's second pass
        sends the choice's token ids alone."""
        check_select_args(prompt, choices)
        if self.tokenizer is not None:
            return score_select(
                self._encode(prompt),
                [self._encode(prompt + c) for c in choices],
                choices,
                method,
                self._input_logprobs,
                self._prefill_ids,
            )
        scored, outs, prompt_tokens = self._score_from_server(prompt, choices)
        return decide(choices, method, scored, prompt_tokens, [o["meta_info"] for o in outs], self._input_logprobs)

    def _encode(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer(text)["input_ids"])

    def _prefill_ids(self, ids: list[int]) -> None:
        self._request("POST", "/generate", {"input_ids": ids, "sampling_params": _SCORE_ONLY})

    def _input_logprobs(self, id_lists: list[list[int]], start: int) -> list[tuple[list, dict[str, Any]]]:
        # One position early: the entries then cover every position from `start` whichever convention the
        # server has for the entry at logprob_start_len (see _tail).
        outs = self._request(
            "POST",
            "/generate",
            {
                "input_ids": id_lists,
                "sampling_params": [_SCORE_ONLY] * len(id_lists),
                "return_logprob": True,
                "logprob_start_len": max(start - 1, 0),
            },
        )
        return [
            (_tail(_as_tuples(o["meta_info"])["input_token_logprobs"], ids[start:]), o["meta_info"])
            for o, ids in zip(outs, id_lists)
        ]

    def _score_from_server(self, prompt: str, choices: Sequence[str]):
        head = self._request("POST", "/generate", {"text": prompt, "sampling_params": _SCORE_ONLY})
        prompt_tokens = head["meta_info"]["prompt_tokens"]
        window = max(prompt_tokens - _TAIL_TOKENS, 0)  # first position whose token ids come back
        texts = [prompt] + [prompt + c for c in choices]
        outs = self._request(
            "POST",
            "/generate",
            {
                "text": texts,
                "sampling_params": [_SCORE_ONLY] * len(texts),
                "return_logprob": True,
                "logprob_start_len": window,
            },
        )
        entries = [_as_tuples(o["meta_info"])["input_token_logprobs"] for o in outs]
        tail_ids = [e[1] for e in entries[0]]
        scored = []
        for choice, own in zip(choices, entries[1:]):
            start = common_prefix_len(tail_ids, [e[1] for e in own])
            if start < len(own) and own[start][0] is None:  # the first prompt token has no logprob
                start += 1
            if start >= len(own):
                raise ValueError(f"select choice {choice!r} adds no token to the prompt")
            scored.append(own[start:])
        return scored, outs[1:], prompt_tokens
