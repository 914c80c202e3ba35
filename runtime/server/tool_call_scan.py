"""Reading JSON call objects while they are still being written, for streamed tool calls.

`scan_call_object` looks at a prefix of `{"name": "...", "arguments": {...}}` and says what is known so
far: the function's name once its string is complete (only when `name` is the object's first key, so
that the name being known already decides that this is a call, however the rest arrives), where the
arguments' raw text starts and, once it has, where it ends, and where the object ends. Everything is a
function of the text so far that only gains information as text is added: what a prefix says, the whole
text says too (the streaming parser relies on that to send argument fragments early).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_WHITESPACE = " \t\n\r"


def skip_whitespace(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


def json_extent(text: str, start: int) -> int | None:
    """End of the JSON object or array that opens at `text[start]`, None if the text ends first.
    Only strings and brackets are followed (a `</tool_call>` inside a string is not an end), so the
    answer for a prefix of a text agrees with the answer for the text."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def string_end(text: str, start: int) -> int | None:
    """End (after the closing quote) of the JSON string that opens at `text[start]`."""
    escaped = False
    for i in range(start + 1, len(text)):
        if escaped:
            escaped = False
        elif text[i] == "\\":
            escaped = True
        elif text[i] == '"':
            return i + 1
    return None


def value_end(text: str, start: int) -> int | None:
    """End of the JSON value that starts at `text[start]`; None while it may go on. A scalar (number,
    literal) ends at the first delimiter, so one that reaches the end of the text is unfinished."""
    c = text[start]
    if c in "{[":
        return json_extent(text, start)
    if c == '"':
        return string_end(text, start)
    i = start
    while i < len(text) and text[i] not in ",}]" + _WHITESPACE:
        i += 1
    return None if i == len(text) else i


def _string(raw: str) -> str | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ObjectScan:
    """What a prefix of a call object shows. `arguments`: (start, end) of the first arguments key's
    raw value text, end None while unfinished. `end`: after the closing brace. `valid` False: not a
    well-formed call object whose first key is `name` (what is known before the fault still holds)."""

    name: str | None = None
    arguments: tuple[int, int | None] | None = None
    end: int | None = None
    valid: bool = True


def scan_call_object(text: str, start: int, arguments_keys: tuple[str, ...]) -> ObjectScan:
    """Scan the call object that opens at `text[start]` (a `{`); see `ObjectScan`."""
    name: str | None = None
    arguments: tuple[int, int | None] | None = None
    i, first = skip_whitespace(text, start + 1), True
    while True:
        if i >= len(text):
            return ObjectScan(name, arguments)
        if text[i] == "}":
            return ObjectScan(name, arguments, i + 1, valid=name is not None)
        if not first:
            if text[i] != ",":
                return ObjectScan(name, arguments, valid=False)
            i = skip_whitespace(text, i + 1)
            if i >= len(text):
                return ObjectScan(name, arguments)
        if text[i] != '"':
            return ObjectScan(name, arguments, valid=False)
        key_end = string_end(text, i)
        if key_end is None:
            return ObjectScan(name, arguments)
        key = _string(text[i:key_end])
        if key is None or (first and key != "name"):
            return ObjectScan(name, arguments, valid=False)
        i = skip_whitespace(text, key_end)
        if i < len(text) and text[i] != ":":
            return ObjectScan(name, arguments, valid=False)
        i = skip_whitespace(text, i + 1)
        if i >= len(text):
            return ObjectScan(name, arguments)
        end = value_end(text, i)
        if first:  # the name: a string, complete before anything is decided
            if text[i] != '"':
                return ObjectScan(valid=False)
            if end is None:
                return ObjectScan()
            name = _string(text[i:end])
            if name is None:
                return ObjectScan(valid=False)
        elif key in arguments_keys and arguments is None:
            arguments = (i, end)
        if end is None:
            return ObjectScan(name, arguments)
        i, first = skip_whitespace(text, end), False
