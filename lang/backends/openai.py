"""`OpenAI`: programs run against OpenAI's API or any OpenAI-compatible server, through the `openai` package.

`OpenAI(model_name, base_url=None, api_key=None, is_chat_model=None, chat_template=None, **client_kwargs)`;
`client_kwargs` go to `openai.OpenAI` (`max_retries`, `timeout`, `default_headers`, ...).

Chat models (the default; `is_chat_model=False` or a known completion model name selects completions):
a gen is sent as `chat.completions` with the program's messages so far (the interpreter passes them as a
`ChatContext`), so it must open an assistant message: `s += sgl.assistant(sgl.gen("x"))`. A chat API
cannot continue a message, so a gen after other text in the same assistant message is a `ValueError`
(as in SGLang). Completion models get `completions` with the program text as the prompt.

Sampling parameters: max_new_tokens -> max_tokens; stop, temperature, top_p, frequency_penalty,
presence_penalty, seed as they are; json_schema -> `response_format` `{"type": "json_schema"}` (chat).
Parameters OpenAI's API has no name for (regex, and so gen_int/dtype; top_k, min_p, repetition_penalty,
min_tokens, stop_token_ids, ignore_eos; json_schema on completions) go in `extra_body`, the extension
loomlm's, SGLang's and vLLM's servers read; against api.openai.com they are a `ValueError`.

select (the `choices_method` applies where there are logprobs to apply it to):
- completion models: every `prompt + choice` is echoed back with `logprobs` (`echo=True`); the tokens
  that end past the prompt (`text_offset`) are the choice's, and the choices method picks as in the
  in-process backend. A server that refuses echoed logprobs falls back to the next way.
- chat models (and that fallback): one greedy generation of about the longest choice's length (in
  characters, at least as many as tokens), with the first token's top logprobs where the server gives
  them; the choice sharing the longest prefix with the output wins (leading spaces ignored), ties and
  misses going to the choice whose start is likeliest among the first token's alternatives, then to
  the first choice mentioned anywhere in the output, then to the first choice. The meta info says which.

Errors: HTTP 4xx -> `ValueError`, 5xx -> `RuntimeError` (with the server's message), no connection ->
`ConnectionError` naming the URL, timeouts -> `TimeoutError`.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from loomlm.lang.backends.base import Backend, ChatContext, GenResult
from loomlm.lang.chat_template import ChatTemplate
from loomlm.lang.choices import ChoicesDecision, ChoicesMethod
from loomlm.lang.ir import LogprobRequest

# Models served only by the completions endpoint (SGLang's list, plus OpenAI's base models).
COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")
_STANDARD = {
    "max_new_tokens": "max_tokens",
    "stop": "stop",
    "temperature": "temperature",
    "top_p": "top_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "seed": "seed",
}
_EXTENSIONS = {
    "regex": "regex",
    "ebnf": "ebnf",  # SGLang's and vLLM's servers read it (vLLM: guided_grammar, also accepted by SGLang)
    "structural_tag": "structural_tag",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_new_tokens": "min_tokens",
    "stop_token_ids": "stop_token_ids",
    "ignore_eos": "ignore_eos",
}
_SELECT_TOP_LOGPROBS = 5


def _import_openai():
    try:
        import openai
    except ImportError:
        raise ImportError("the OpenAI backend needs the `openai` package: pip install openai") from None
    return openai


def _finish(reason: str | None) -> dict[str, Any] | None:
    return None if reason is None else {"type": reason, "matched": None}


def _usage_meta(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": getattr(details, "cached_tokens", None) or 0,
    }


def _logprob_entries(logprobs: Any, chat_api: bool) -> tuple[list[tuple], list[list[tuple]]]:
    """(output_token_logprobs, output_top_logprobs) in SGLang's entry shape (logprob, token_id, text);
    the APIs return token texts, not ids, so ids are None."""
    if logprobs is None:
        return [], []
    if chat_api:
        content = logprobs.content or []
        return (
            [(t.logprob, None, t.token) for t in content],
            [[(a.logprob, None, a.token) for a in (t.top_logprobs or [])] for t in content],
        )
    tokens, values = logprobs.tokens or [], logprobs.token_logprobs or []
    tops = logprobs.top_logprobs or [None] * len(tokens)
    return (
        [(v, None, t) for t, v in zip(tokens, values)],
        [[(v, None, t) for t, v in (top or {}).items()] for top in tops],
    )


class OpenAI(Backend):
    """See the module docstring."""

    wants_chat_context = True

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        is_chat_model: bool | None = None,
        chat_template: ChatTemplate | None = None,
        **client_kwargs: Any,
    ):
        openai = _import_openai()
        known = set(inspect.signature(openai.OpenAI.__init__).parameters) - {"self", "api_key", "base_url"}
        for name in client_kwargs:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(
                    f"OpenAI got an unknown argument {name!r}{hint}; besides model_name, base_url, "
                    f"api_key, is_chat_model and chat_template it takes openai.OpenAI's: "
                    f"{', '.join(sorted(known))}"
                )
        if api_key is None and base_url is not None and not os.environ.get("OPENAI_API_KEY"):
            api_key = "EMPTY"  # a local server needs no key, but the client insists on one
        self._openai = openai
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, **client_kwargs)
        self.model = model_name
        self.base_url = str(self.client.base_url).rstrip("/")
        self.is_openai = "api.openai.com" in self.base_url  # OpenAI proper: no extension parameters
        self.is_chat_model = model_name not in COMPLETION_MODELS if is_chat_model is None else is_chat_model
        self.chat_template = chat_template or ChatTemplate.plain()

    def model_name(self) -> str:
        return self.model

    # ---- requests ----------------------------------------------------------------------------
    def _error(self, exc: Exception) -> Exception:
        """The Python exception an `openai` error becomes (anything else unchanged)."""
        openai = self._openai
        if isinstance(exc, openai.APITimeoutError):
            return TimeoutError(f"no answer from {self.base_url} in time: {exc}")
        if isinstance(exc, openai.APIConnectionError):
            return ConnectionError(f"cannot reach the OpenAI-compatible server at {self.base_url}: {exc}")
        if isinstance(exc, openai.APIStatusError):
            body = exc.body
            message = None
            if isinstance(body, dict):
                inner = body.get("error")
                message = body.get("message") or (inner.get("message") if isinstance(inner, dict) else inner)
            kind = ValueError if exc.status_code < 500 else RuntimeError
            return kind(f"{self.base_url} answered HTTP {exc.status_code}: {message or exc}")
        return exc

    def _create(self, chat_api: bool, **kwargs: Any) -> Any:
        endpoint = self.client.chat.completions if chat_api else self.client.completions
        try:
            return endpoint.create(model=self.model, **kwargs)
        except self._openai.OpenAIError as exc:
            raise self._error(exc) from None

    def _kwargs(self, sampling: dict[str, Any], lp: LogprobRequest, chat_api: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in sampling.items():
            if name in _STANDARD:
                kwargs[_STANDARD[name]] = value
            elif name == "json_schema" and chat_api:
                schema = json.loads(value) if isinstance(value, str) else value
                kwargs["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
            elif name == "json_schema":
                extra["json_schema"] = value
            elif name in _EXTENSIONS:
                extra[_EXTENSIONS[name]] = value
            else:
                raise ValueError(f"sampling parameter {name!r} has no OpenAI API equivalent")
        if extra and self.is_openai:
            raise ValueError(
                f"OpenAI's API has no {', '.join(sorted(extra))} parameter (regex and gen_int "
                f"need one); run the program on a loomlm, SGLang or vLLM server (base_url=...) "
                f"or with RuntimeEndpoint"
            )
        if extra:
            kwargs["extra_body"] = extra
        if lp.return_logprob and chat_api:
            kwargs["logprobs"] = True
            if lp.top_logprobs_num:
                kwargs["top_logprobs"] = lp.top_logprobs_num
        elif lp.return_logprob:
            kwargs["logprobs"] = max(lp.top_logprobs_num, 1)
        return kwargs

    def _messages(self, chat: ChatContext | None, what: str) -> list[dict[str, str]]:
        if chat is None or chat.open_role != "assistant":
            raise ValueError(
                f"chat model {self.model!r}: a {what} must begin an assistant message, as in "
                f"s += sgl.assistant(sgl.gen('answer')); for a completion model pass "
                f"is_chat_model=False"
            )
        if chat.open_text:
            raise ValueError(
                f"chat model {self.model!r}: the assistant message already holds "
                f"{chat.open_text[:40]!r} and a chat API cannot continue a message; put the "
                f"{what} first in the assistant message"
            )
        if not chat.messages:
            raise ValueError(f"chat model {self.model!r}: no message precedes the assistant's")
        return [{"role": m["role"], "content": m["content"]} for m in chat.messages]

    def _prompt(self, prompt: str, chat: ChatContext | None, what: str) -> dict[str, Any]:
        if self.is_chat_model:
            return {"messages": self._messages(chat, what)}
        return {"prompt": prompt}

    # ---- generation --------------------------------------------------------------------------
    def generate(
        self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest, chat: ChatContext | None = None
    ) -> GenResult:
        chat_api = self.is_chat_model
        request = {**self._prompt(prompt, chat, "gen"), **self._kwargs(sampling, logprobs, chat_api)}
        response = self._create(chat_api, **request)
        choice = response.choices[0]
        text = (choice.message.content or "") if chat_api else choice.text
        meta = {"id": response.id, **_usage_meta(response.usage), "finish_reason": _finish(choice.finish_reason)}
        if logprobs.return_logprob:
            meta["output_token_logprobs"], top = _logprob_entries(choice.logprobs, chat_api)
            if logprobs.top_logprobs_num:
                meta["output_top_logprobs"] = top
        return GenResult(text, meta)

    def generate_stream(
        self, prompt: str, sampling: dict[str, Any], logprobs: LogprobRequest, chat: ChatContext | None = None
    ) -> Iterator[GenResult]:
        chat_api = self.is_chat_model
        request = {
            **self._prompt(prompt, chat, "gen"),
            **self._kwargs(sampling, logprobs, chat_api),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        stream = self._create(chat_api, **request)
        # Until the usage arrives (last event), completion_tokens counts the logprob entries, or else the
        # text events: a lower bound of the tokens, since every event carries at least one.
        meta: dict[str, Any] = {"completion_tokens": 0, "finish_reason": None}
        entries: list[tuple] = []
        try:
            for chunk in stream:
                meta["id"] = chunk.id
                if chunk.usage is not None:
                    meta.update(_usage_meta(chunk.usage))
                    yield GenResult("", dict(meta))
                for choice in chunk.choices:
                    text = (choice.delta.content or "") if chat_api else (choice.text or "")
                    new, _top = _logprob_entries(choice.logprobs, chat_api)
                    entries += new
                    meta["completion_tokens"] += len(new) if new else int(bool(text))
                    if logprobs.return_logprob:
                        meta["output_token_logprobs"] = list(entries)
                    if choice.finish_reason is not None:
                        meta["finish_reason"] = _finish(choice.finish_reason)
                    if text or choice.finish_reason is not None:
                        yield GenResult(text, dict(meta))
        except self._openai.OpenAIError as exc:
            raise self._error(exc) from None
        finally:
            stream.close()

    # ---- select ------------------------------------------------------------------------------
    def select(
        self, prompt: str, choices: Sequence[str], method: ChoicesMethod, chat: ChatContext | None = None
    ) -> ChoicesDecision:
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"select needs a non-empty list of non-empty strings, got {choices!r}")
        if not self.is_chat_model:
            if method.needs_unconditional:
                raise ValueError(
                    f"{method} needs the choices' token ids, which OpenAI's API does not return; "
                    f"use token_length_normalized or greedy_token_selection, or RuntimeEndpoint"
                )
            scored = self._echo_logprobs(prompt, choices)
            if scored is not None:
                decision = method(list(choices), scored)
                decision.meta_info["selection"] = "echo_logprobs"
                return decision
        return self._generate_and_match(self._prompt(prompt, chat, "select"), choices)

    def _echo_logprobs(self, prompt: str, choices: Sequence[str]) -> list[list[tuple]] | None:
        """Per choice, (logprob, None, token) of its tokens, or None where the server gives no echo."""
        try:
            response = self._create(
                False, prompt=[prompt + c for c in choices], echo=True, logprobs=1, max_tokens=1, temperature=0
            )
        except ValueError:  # e.g. OpenAI's current models: echo with logprobs is refused
            return None
        rows = sorted(response.choices, key=lambda c: c.index)
        if len(rows) != len(choices):
            return None
        scored = []
        for choice, row in zip(choices, rows):
            lp = row.logprobs
            if lp is None or not lp.token_logprobs or not lp.text_offset:
                return None
            end_of_text = len(prompt) + len(choice)
            offsets = list(lp.text_offset) + [end_of_text]
            # Token j spans offsets[j]..offsets[j+1]: it is the choice's if it ends past the prompt (a token
            # merged across the boundary included); tokens from end_of_text on were generated.
            entries = [
                (v, None, t)
                for j, (t, v) in enumerate(zip(lp.tokens, lp.token_logprobs))
                if j > 0 and offsets[j] < end_of_text and min(offsets[j + 1], end_of_text) > len(prompt)
            ]
            if not entries:
                raise ValueError(f"select choice {choice!r} adds no token to the prompt")
            scored.append(entries)
        return scored

    def _generate_and_match(self, prompt: dict[str, Any], choices: Sequence[str]) -> ChoicesDecision:
        chat_api = self.is_chat_model
        request = {**prompt, "temperature": 0, "max_tokens": max(1, min(max(len(c) for c in choices), 256))}
        with_logprobs = (
            {"logprobs": True, "top_logprobs": _SELECT_TOP_LOGPROBS} if chat_api else {"logprobs": _SELECT_TOP_LOGPROBS}
        )
        try:
            response = self._create(chat_api, **request, **with_logprobs)
        except ValueError:  # a server without logprobs
            response = self._create(chat_api, **request)
        row = response.choices[0]
        output = ((row.message.content or "") if chat_api else row.text).lstrip()
        stripped = [c.lstrip() for c in choices]
        matched = [len(os.path.commonprefix([output, c])) for c in stripped]
        _, tops = _logprob_entries(row.logprobs, chat_api)
        first = [-float("inf")] * len(choices)  # best alternative first token that starts the choice
        for value, _id, token in tops[0] if tops else []:
            piece = token.lstrip()
            for i, c in enumerate(stripped):
                if piece and (c.startswith(piece) or piece.startswith(c)):
                    first[i] = max(first[i], value)
        if max(matched) > 0 or max(first) > -float("inf"):
            index = max(range(len(choices)), key=lambda i: (matched[i], first[i], -i))
            how = "longest_common_prefix" if max(matched) > 0 else "first_token_logprob"
        else:
            found = [(m.start(), i) for i, c in enumerate(stripped) if (m := re.search(re.escape(c), output))]
            index, how = (min(found)[1], "mentioned") if found else (0, "no_match")
        meta = {
            "selection": f"generate_and_match:{how}",
            "generated_text": output,
            "matched_chars": matched,
            "first_token_logprobs": first if tops else None,
        }
        return ChoicesDecision(choices[index], index, meta)
