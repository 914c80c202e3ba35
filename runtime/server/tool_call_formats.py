"""The tool-call formats `--tool-call-parser` chooses between: how calls look in the assistant's text.

- `hermes` (the default; Qwen 2.5 / Hermes): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call; tool results go back as `<tool_response>...</tool_response>`.
- `llama3` (Llama 3.1/3.2's JSON tool calling): a bare `{"name": ..., "parameters": {...}}` object,
  several separated by `; `; results as `<tool_response>` too (the default model's template knows no
  `ipython` role).
- `mistral`: `[TOOL_CALLS]` then a JSON array of `{"name": ..., "arguments": {...}}` objects; results
  as `[TOOL_RESULTS]{"content": ...}[/TOOL_RESULTS]`; call ids are 9 letters or digits, as Mistral's
  templates require.

Each format gives the instruction for the tools prompt, the structural-tag format that constrains
calls (a call names one of the functions and its arguments match that function's schema), the text
of past calls for the history, and `take`, which reads calls off text that starts right after the
format's trigger. For streams, `first_object` and `after_object` give the layout of the calls' JSON
objects after the trigger, so argument text can be sent as it is written (`tool_call_parser`).
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from typing import Any

from loomlm.runtime.server.tool_call_scan import json_extent, skip_whitespace

Call = tuple[str, Any]  # (function name, arguments as a JSON value)


def _call_object(fn: dict[str, Any], arguments_key: str) -> dict[str, Any]:
    """JSON schema of one call of `fn`: its name and arguments under `arguments_key`."""
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, arguments_key: fn["parameters"]},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _one_of(formats: list[dict[str, Any]]) -> dict[str, Any]:
    return formats[0] if len(formats) == 1 else {"type": "or", "elements": formats}


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _as_call(value: Any, arguments_keys: tuple[str, ...]) -> Call | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = next((value[k] for k in arguments_keys if k in value), {})
    return value["name"], arguments


class ToolCallFormat:
    name = ""
    trigger = ""  # text that starts calls in free output
    keeps_trigger = False  # the trigger is part of the call's own text (llama3's JSON object)
    separators = " \n"  # content made of these alone, around calls, is no content
    arguments_keys = ("arguments", "parameters")  # where a call object keeps its arguments, preferred first

    def instructions(self) -> str:
        raise NotImplementedError

    def constraint(self, functions: list[dict[str, Any]], required: bool, parallel: bool) -> dict[str, Any]:
        """The structural-tag format (XGrammar's composable one) of text with calls of `functions`;
        `required`: the text is the calls alone."""
        raise NotImplementedError

    def write(self, calls: list[Call]) -> str:
        """Past calls as the assistant wrote them."""
        raise NotImplementedError

    def tool_result(self, text: str) -> str:
        return f"<tool_response>\n{text}\n</tool_response>"

    def take(self, text: str) -> tuple[list[Call] | None, int] | None:
        """Calls at the start of `text` (which follows the trigger, or starts with it if kept):
        None while they may still be incomplete, else (the calls, or None when the text is not a
        call after all; characters used)."""
        raise NotImplementedError

    def first_object(self, text: str) -> int | None:
        """Where the first call object (`{`) of `text` (as `take` gets it) starts; None while unknown;
        -1 when the text does not start with call objects as the format lays them out."""
        raise NotImplementedError

    def after_object(self, text: str, end: int) -> tuple[str, int] | None:
        """After a call object that ends at `end`: ("next", start of the next call object), ("end",
        end of the calls' text: the rest is content again), or None while unknown."""
        raise NotImplementedError

    def call_id(self) -> str:
        return f"call_{uuid.uuid4().hex[:24]}"


class HermesFormat(ToolCallFormat):
    name, trigger = "hermes", "<tool_call>"
    close = "</tool_call>"

    def instructions(self) -> str:
        call = '{"name": "<function name>", "arguments": {<arguments as JSON>}}'
        return f"To call one, write {self.trigger}{call}{self.close}."

    def constraint(self, functions: list[dict[str, Any]], required: bool, parallel: bool) -> dict[str, Any]:
        tags = [
            {
                "type": "tag",
                "begin": self.trigger,
                "content": {"type": "json_schema", "json_schema": _call_object(fn, "arguments")},
                "end": self.close,
            }
            for fn in functions
        ]
        if required:
            return _one_of(tags)
        return {"type": "triggered_tags", "triggers": [self.trigger], "tags": tags, "stop_after_first": not parallel}

    def write(self, calls: list[Call]) -> str:
        return "".join(
            self.trigger + json.dumps({"name": n, "arguments": a}, ensure_ascii=False) + self.close for n, a in calls
        )

    def take(self, text: str) -> tuple[list[Call] | None, int] | None:
        start = len(text) - len(text.lstrip())
        if start == len(text):
            return None
        end = json_extent(text, start) if text[start] == "{" else start
        if end is None:
            return None
        after = len(text) - len(text[end:].lstrip())
        if len(text) - after < len(self.close) and self.close.startswith(text[after:]):  # it may still come
            return None
        if end > start and text.startswith(self.close, after):
            call = _as_call(_parsed(text[start:end]), ("arguments", "parameters"))
            return ([call] if call else None), after + len(self.close)
        close = text.find(self.close, end)
        return None if close < 0 else (None, close + len(self.close))

    def first_object(self, text: str) -> int | None:
        start = skip_whitespace(text, 0)
        return None if start == len(text) else (start if text[start] == "{" else -1)

    def after_object(self, text: str, end: int) -> tuple[str, int] | None:
        after = skip_whitespace(text, end)
        if text.startswith(self.close, after):
            return "end", after + len(self.close)
        if self.close.startswith(text[after:]):  # it may still come
            return None
        return "end", end


class Llama3JsonFormat(ToolCallFormat):
    name, trigger, keeps_trigger = "llama3", '{"name": ', True
    arguments_keys = ("parameters", "arguments")
    separators = " \n;"

    def instructions(self) -> str:
        return (
            'To call one, answer with only a JSON object {"name": "<function name>", "parameters": {<arguments '
            'as JSON>}}; separate several calls with "; ".'
        )

    def constraint(self, functions: list[dict[str, Any]], required: bool, parallel: bool) -> dict[str, Any]:
        tags = [
            {
                "type": "tag",
                "begin": '{"name": ' + json.dumps(fn["name"], ensure_ascii=False) + ', "parameters": ',
                "content": {"type": "json_schema", "json_schema": fn["parameters"]},
                "end": "}",
            }
            for fn in functions
        ]
        if required:
            return _one_of(tags)
        return {"type": "triggered_tags", "triggers": [self.trigger], "tags": tags, "stop_after_first": not parallel}

    def write(self, calls: list[Call]) -> str:
        return "; ".join(json.dumps({"name": n, "parameters": a}, ensure_ascii=False) for n, a in calls)

    def take(self, text: str) -> tuple[list[Call] | None, int] | None:
        end = json_extent(text, 0)
        if end is None:
            return None  # constrained output completes the object; an unfinished one is content at the end
        call = _as_call(_parsed(text[:end]), ("parameters", "arguments"))
        return ([call] if call else None), end

    def first_object(self, text: str) -> int | None:
        return 0  # the trigger is the object's own start

    def after_object(self, text: str, end: int) -> tuple[str, int] | None:
        return "end", end  # several calls are separate objects, each after its own trigger


class MistralFormat(ToolCallFormat):
    name, trigger = "mistral", "[TOOL_CALLS]"
    _ID_CHARS = string.ascii_letters + string.digits

    def instructions(self) -> str:
        return (
            f'To call functions, write {self.trigger} then a JSON array of calls, each {{"name": "<function '
            'name>", "arguments": {<arguments as JSON>}}.'
        )

    def constraint(self, functions: list[dict[str, Any]], required: bool, parallel: bool) -> dict[str, Any]:
        items = [_call_object(fn, "arguments") for fn in functions]
        array: dict[str, Any] = {"type": "array", "items": items[0] if len(items) == 1 else {"anyOf": items}}
        array.update({"minItems": 1} if parallel else {"minItems": 1, "maxItems": 1})
        tag = {
            "type": "tag",
            "begin": self.trigger,
            "content": {"type": "json_schema", "json_schema": array},
            "end": "",
        }
        if required:
            return tag
        return {"type": "triggered_tags", "triggers": [self.trigger], "tags": [tag], "stop_after_first": True}

    def write(self, calls: list[Call]) -> str:
        return self.trigger + json.dumps([{"name": n, "arguments": a} for n, a in calls], ensure_ascii=False)

    def tool_result(self, text: str) -> str:
        return "[TOOL_RESULTS]" + json.dumps({"content": text}, ensure_ascii=False) + "[/TOOL_RESULTS]"

    def take(self, text: str) -> tuple[list[Call] | None, int] | None:
        start = len(text) - len(text.lstrip())
        if start == len(text):
            return None
        if text[start] not in "[{":  # decided by one character, so however the text arrives
            return None, start
        end = json_extent(text, start)
        if end is None:
            return None
        value = _parsed(text[start:end])
        values = value if isinstance(value, list) else [value]
        calls = [_as_call(v, ("arguments", "parameters")) for v in values]
        if not calls or None in calls:
            return None, end
        return calls, end  # type: ignore[return-value]

    def first_object(self, text: str) -> int | None:
        start = skip_whitespace(text, 0)
        if start < len(text) and text[start] == "[":
            start = skip_whitespace(text, start + 1)
        if start == len(text):
            return None
        return start if text[start] == "{" else -1

    def after_object(self, text: str, end: int) -> tuple[str, int] | None:
        if text[skip_whitespace(text, 0)] != "[":  # one bare object
            return "end", end
        after = skip_whitespace(text, end)
        if after == len(text):
            return None
        if text[after] == "]":
            return "end", after + 1
        if text[after] == ",":
            following = skip_whitespace(text, after + 1)
            if following == len(text):
                return None
            if text[following] == "{":
                return "next", following
        return "end", end

    def call_id(self) -> str:
        return "".join(secrets.choice(self._ID_CHARS) for _ in range(9))


FORMATS: dict[str, ToolCallFormat] = {f.name: f for f in (HermesFormat(), Llama3JsonFormat(), MistralFormat())}
TOOL_CALL_PARSERS = tuple(FORMATS)


def tool_call_format(name: str) -> ToolCallFormat:
    if name not in FORMATS:
        raise ValueError(f"tool_call_parser must be one of {', '.join(TOOL_CALL_PARSERS)}, got {name!r}")
    return FORMATS[name]
