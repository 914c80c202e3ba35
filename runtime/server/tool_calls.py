"""Tool calling for chat completions: the tools' prompt, the constraint, the history, the output parser.

The call format is the server's `--tool-call-parser` (`tool_call_formats`: hermes, llama3, mistral).
When tools are given, either the chat template renders them itself (a template that reads `tools`, as
Qwen's and Llama 3.1's do: the conversation and tools go to it as OpenAI gives them) or, for templates
without tool support (the default model's), a system message (`tools_prompt`) lists the functions'
JSON signatures and the format, ahead of the conversation's own system message, and past calls and
tool results are written in the format.

The output is constrained by a structural tag (`tool_constraint`): free text in which the format's
trigger starts a call that must name one of the tools and match its parameter schema; `required` and
a named tool make the answer exactly the call(s) (the grammar engine holds even a 135M model to valid
arguments); with `auto`, `parallel_tool_calls: false` stops after the first call; `none` leaves tools
out. `tool_call_parser.ToolCallParser` splits the output into content and calls (streamed: as deltas).
"""

from __future__ import annotations

import json
from typing import Any

from loomlm.runtime.server.errors import ApiError
from loomlm.runtime.server.tool_call_formats import ToolCallFormat


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


def tools_prompt(tools: list[dict[str, Any]], form: ToolCallFormat) -> str:
    """The system message that describes the tools and the call format (templates without tools)."""
    signatures = "\n".join(json.dumps(fn, ensure_ascii=False) for fn in _functions(tools))
    return (
        "You can call functions to help with the request. Their signatures, one JSON object per line:\n"
        f"<tools>\n{signatures}\n</tools>\n{form.instructions()}"
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


def tool_constraint(form: ToolCallFormat, functions: list[dict[str, Any]], required: bool, parallel: bool) -> str:
    """The `structural_tag` sampling parameter of text with calls of `functions` in `form`."""
    return json.dumps({"type": "structural_tag", "format": form.constraint(functions, required, parallel)})


def _past_calls(m: Any) -> list[tuple[str, Any]]:
    calls = []
    for call in m.tool_calls or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, "an assistant tool call must have function.name", "messages")
        try:
            arguments = json.loads(fn.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise ApiError(400, "an assistant tool call's arguments must be a JSON string", "messages") from None
        calls.append((fn["name"], arguments))
    return calls


def history_messages(messages: list[Any], form: ToolCallFormat, native: bool) -> list[dict[str, Any]]:
    """Chat messages for the template. `native`: the template renders tools itself, so calls go as
    OpenAI's `tool_calls` (arguments as objects, as Hugging Face templates read them) and results as
    `tool` messages; otherwise calls are written in `form` and results become user turns."""
    out = []
    for m in messages:
        text, calls = m.text(), _past_calls(m) if m.role == "assistant" else []
        if native:
            message: dict[str, Any] = {"role": m.role, "content": text}
            if calls:
                message["tool_calls"] = [
                    {"id": c.get("id"), "type": "function", "function": {"name": n, "arguments": a}}
                    for c, (n, a) in zip(m.tool_calls, calls)
                ]
            if m.role == "tool" and m.tool_call_id is not None:
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        elif m.role == "tool":
            out.append({"role": "user", "content": form.tool_result(text)})
        else:
            out.append(
                {
                    "role": "system" if m.role == "developer" else m.role,
                    "content": text + (form.write(calls) if calls else ""),
                }
            )
    return out


def with_tools_prompt(messages: list[dict[str, Any]], system: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": system + "\n\n" + messages[0]["content"]}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]
