"""Tool calling for chat completions: the tools' prompt, the constraint, the parser of the output.

Format (`--tool-call-parser` has one value so far): a call is `<tool_call>{"name": ..., "arguments":
{...}}</tool_call>` in the assistant's text. When tools are given, a system message (`tools_prompt`)
lists their JSON signatures and asks for that format, ahead of the conversation's own system message.
The output is constrained by a structural tag (`tool_constraint`): free text in which `<tool_call>`
starts a JSON object that must name one of the tools and match its parameter schema; `required` and a
named tool make the answer exactly one call (the grammar engine holds even a 135M model to valid
arguments); with `auto`, `parallel_tool_calls: false` stops after the first call; `none` leaves tools
out. `ToolCallParser` splits text into content and calls, incrementally for streams (a possible
`<tool_call>` prefix at the end of the text so far is held back). History: an assistant message's
`tool_calls` are written back in the same format and `tool` messages become user turns wrapped in
`<tool_response>`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from loomlm.runtime.server.errors import ApiError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOL_CALL_PARSERS = ("tool_call",)


def _functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (
            tool.get("type", "function") != "function"
            or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
        ):
            raise ApiError(
                400, "each tool must be {'type': 'function', 'function': {'name': ..., 'parameters': ...}}", "tools"
            )
        out.append(
            {
                "name": fn["name"],
                "description": fn.get("description", ""),
                "parameters": fn.get("parameters") or {"type": "object"},
            }
        )
    return out


def tools_prompt(tools: list[dict[str, Any]]) -> str:
    """The system message that describes the tools and the call format."""
    signatures = "\n".join(json.dumps(fn, ensure_ascii=False) for fn in _functions(tools))
    return (
        "You can call functions to help with the request. Their signatures, one JSON object per line:\n"
        f"<tools>\n{signatures}\n</tools>\n"
        f'To call one, write {OPEN}{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}{CLOSE}.'
    )


def chosen_functions(tools: list[dict[str, Any]], tool_choice: Any) -> tuple[list[dict[str, Any]], bool]:
    """(the functions the output may call, whether it must call one) for a `tool_choice`."""
    functions = _functions(tools)
    if tool_choice in (None, "auto"):
        return functions, False
    if tool_choice == "required":
        return functions, True
    if isinstance(tool_choice, dict) and isinstance((tool_choice.get("function") or {}).get("name"), str):
        name = tool_choice["function"]["name"]
        picked = [fn for fn in functions if fn["name"] == name]
        if not picked:
            raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
        return picked, True
    raise ApiError(
        400, f"tool_choice must be 'none', 'auto', 'required' or a named function, got {tool_choice!r}", "tool_choice"
    )


def tool_constraint(functions: list[dict[str, Any]], required: bool, parallel: bool) -> str:
    """The structural tag (composable format) of free text with calls of `functions`."""
    tags = [
        {
            "type": "tag",
            "begin": OPEN,
            "content": {
                "type": "json_schema",
                "json_schema": {
                    "type": "object",
                    "properties": {"name": {"const": fn["name"]}, "arguments": fn["parameters"]},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                },
            },
            "end": CLOSE,
        }
        for fn in functions
    ]
    calls: dict[str, Any]
    if required:  # the answer is one call, nothing else (as vLLM's "required" and named choices are)
        calls = tags[0] if len(tags) == 1 else {"type": "or", "elements": tags}
    else:
        calls = {"type": "triggered_tags", "triggers": [OPEN], "tags": tags, "stop_after_first": not parallel}
    return json.dumps({"type": "structural_tag", "format": calls})


def history_messages(messages: list[Any]) -> list[dict[str, str]]:
    """Chat messages for the template: calls written back in the call format, tool results as user turns."""
    out = []
    for m in messages:
        text = m.text()
        if m.role == "assistant" and m.tool_calls:
            for call in m.tool_calls:
                fn = call.get("function") or {}
                try:
                    arguments = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    raise ApiError(
                        400, "an assistant tool call's arguments must be a JSON string", "messages"
                    ) from None
                text += OPEN + json.dumps({"name": fn.get("name"), "arguments": arguments}, ensure_ascii=False) + CLOSE
        if m.role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"})
        else:
            out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return out


class ToolCallParser:
    """Splits assistant text into content and tool calls, incrementally (`feed` per piece, `finish` at
    the end); `calls` are OpenAI's `tool_calls` entries in order."""

    def __init__(self) -> None:
        self.buffer = ""
        self.inside = False
        self.calls: list[dict[str, Any]] = []

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content that is surely not part of a call, calls completed by this piece)."""
        self.buffer += text
        content, done = "", []
        while True:
            if not self.inside:
                at = self.buffer.find(OPEN)
                if at < 0:
                    keep = next(
                        (
                            k
                            for k in range(min(len(OPEN) - 1, len(self.buffer)), 0, -1)
                            if OPEN.startswith(self.buffer[-k:])
                        ),
                        0,
                    )
                    content += self.buffer[: len(self.buffer) - keep]
                    self.buffer = self.buffer[len(self.buffer) - keep :]
                    return content, done
                content += self.buffer[:at]
                self.buffer, self.inside = self.buffer[at + len(OPEN) :], True
            else:
                end = self.buffer.find(CLOSE)
                if end < 0:
                    return content, done
                call = self._call(self.buffer[:end])
                if call is None:  # not a call after all: its text is content
                    content += OPEN + self.buffer[: end + len(CLOSE)]
                else:
                    done.append(call)
                self.buffer, self.inside = self.buffer[end + len(CLOSE) :], False

    def finish(self) -> str:
        """The text held back at the end (an unfinished call is content)."""
        rest = (OPEN if self.inside else "") + self.buffer
        self.buffer, self.inside = "", False
        return rest

    def _call(self, raw: str) -> dict[str, Any] | None:
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return None
        call = {
            "index": len(self.calls),
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": body["name"], "arguments": json.dumps(body.get("arguments", {}), ensure_ascii=False)},
        }
        self.calls.append(call)
        return call
