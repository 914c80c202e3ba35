"""Splitting assistant text into content and tool calls, incrementally, for streamed and whole answers.

`ToolCallParser(form).feed(piece)` returns the content that is surely not part of a call and OpenAI's
streamed tool-call deltas: for each call first `{index, id, type, function: {name, arguments: ""}}`,
then `{index, function: {arguments: fragment}}` as the arguments' text is written; `finish()` returns
what was held back at the end. `calls` holds the complete calls (OpenAI's `tool_calls` entries; the
arguments are the model's own JSON text, the concatenation of the fragments).

A call is decided as soon as its object's first key, `name`, has its whole string (`tool_call_scan`):
from then on it is a call, and its arguments' text is sent as it comes. A call cut short (the length
limit) keeps the arguments written so far, as OpenAI's API does. An object that does not start with
`name` is decided only when it is complete, by the format's `take` (then sent whole). Every decision
is a function of the text so far that later text does not change, so the calls, the fragments'
concatenation and the content are the same however the text is split into pieces.
"""

from __future__ import annotations

import json
from typing import Any

from loomlm.runtime.server.tool_call_formats import ToolCallFormat
from loomlm.runtime.server.tool_call_scan import json_extent, scan_call_object

Delta = dict[str, Any]


class ToolCallParser:
    def __init__(self, form: ToolCallFormat) -> None:
        self.form = form
        self.buffer = ""  # text not yet given out: outside calls, a possible trigger prefix; inside, the calls
        self.inside = False  # the buffer starts where the calls start (after the trigger, or at it if kept)
        self.calls: list[dict[str, Any]] = []
        self._object: int | None = None  # where the call being written starts in the buffer
        self._next: int | None = None  # where the next call object starts (found, not yet scanned)
        self._after: int | None = None  # end of the last complete call object in the buffer
        self._sent = 0  # argument characters sent for the call being written

    def feed(self, text: str) -> tuple[str, list[Delta]]:
        """(content that is surely not part of a call, tool-call deltas) after `text`."""
        self.buffer += text
        content, deltas = "", []
        while True:
            if not self.inside:
                piece, found = self._content()
                content += piece
                if not found:
                    return content, deltas
                continue
            step = self._calls(deltas)
            if step is None:
                return content, deltas
            content += step

    def finish(self) -> tuple[str, list[Delta]]:
        """What was held back: an unfinished call is finished with the arguments written so far; text
        after the trigger that never became a call is content; the cut-off rest of calls' text (part
        of a closing tag) is dropped."""
        content, deltas = "", []
        if not self.inside:
            content = self.buffer
        elif self._object is not None:
            self._close_call(deltas)
        elif self._after is None:
            content = ("" if self.form.keeps_trigger else self.form.trigger) + self.buffer
        self.buffer, self.inside, self._object, self._after, self._next = "", False, None, None, None
        return content, deltas

    # ---- outside calls ----------------------------------------------------------------------------
    def _content(self) -> tuple[str, bool]:
        """(content up to the next trigger, whether one was found); a possible trigger prefix at the end
        of the buffer is held back."""
        trigger = self.form.trigger
        at = self.buffer.find(trigger)
        if at < 0:
            limit = min(len(trigger) - 1, len(self.buffer))
            keep = next((k for k in range(limit, 0, -1) if trigger.startswith(self.buffer[-k:])), 0)
            piece = self.buffer[: len(self.buffer) - keep]
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return piece, False
        piece = self.buffer[:at]
        self.buffer = self.buffer[at if self.form.keeps_trigger else at + len(trigger) :]
        self.inside, self._after, self._next = True, None, None
        return piece, True

    # ---- inside calls -----------------------------------------------------------------------------
    def _calls(self, deltas: list[Delta]) -> str | None:
        """Advance through the calls' text: None when more text is needed, else content given back
        (the calls' text has ended, or was not calls after all)."""
        if self._object is not None:
            return self._advance_call(deltas)
        if self._after is None and self._next is None:  # the first object
            start = self.form.first_object(self.buffer)
            if start is None:
                return None
            if start < 0:
                return self._whole(deltas)
            self._next = start
        if self._next is None:
            layout = self.form.after_object(self.buffer, self._after)
            if layout is None:
                return None
            kind, at = layout
            if kind == "end":
                return self._leave(at)
            self._next = at
        scan = scan_call_object(self.buffer, self._next, self.form.arguments_keys)
        if scan.name is None:
            if scan.valid:
                return None
            if self._after is None:  # not name-first: decided when complete
                self._next = None
                return self._whole(deltas)
            return self._leave(self._next)
        call = {"index": len(self.calls), "id": self.form.call_id(), "type": "function"}
        call["function"] = {"name": scan.name, "arguments": ""}
        self.calls.append(call)
        deltas.append({**call, "function": dict(call["function"])})
        self._object, self._next, self._sent = self._next, None, 0
        return self._advance_call(deltas)

    def _advance_call(self, deltas: list[Delta]) -> str | None:
        """Send the call's new argument text; close it once its object is complete."""
        scan = scan_call_object(self.buffer, self._object, self.form.arguments_keys)
        if scan.arguments is not None:
            start, end = scan.arguments
            fragment = self.buffer[start + self._sent : len(self.buffer) if end is None else end]
            self._fragment(fragment, deltas)
        end = scan.end if scan.valid else json_extent(self.buffer, self._object)
        if end is None:
            return None
        self._close_call(deltas)
        self._after = end
        return ""

    def _close_call(self, deltas: list[Delta]) -> None:
        if self._sent == 0:  # no arguments key (or an empty value): no arguments
            self._fragment("{}", deltas)
        self._object = None

    def _fragment(self, fragment: str, deltas: list[Delta]) -> None:
        if fragment:
            call = self.calls[-1]
            call["function"]["arguments"] += fragment
            self._sent += len(fragment)
            deltas.append({"index": call["index"], "function": {"arguments": fragment}})

    def _whole(self, deltas: list[Delta]) -> str | None:
        """The format's own reading of calls that do not start with `name`, once they are complete."""
        taken = self.form.take(self.buffer)
        if taken is None:
            return None
        calls, used = taken
        if calls is None:  # not a call after all: its text is content
            content = ("" if self.form.keeps_trigger else self.form.trigger) + self.buffer[:used]
            self.buffer, self.inside = self.buffer[used:], False
            return content
        for name, arguments in calls:
            call = {"index": len(self.calls), "id": self.form.call_id(), "type": "function"}
            call["function"] = {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}
            self.calls.append(call)
            deltas.append({**call, "function": dict(call["function"])})
        self.buffer, self.inside = self.buffer[used:], False
        return ""

    def _leave(self, at: int) -> str:
        """The calls' text ends at `at`; what follows is content again."""
        self.buffer, self.inside, self._after, self._next = self.buffer[at:], False, None, None
        return ""
