"""Role prefixes, suffixes and stop strings, read off a tokenizer's own chat template.

`with s.user(): ...` writes `prefix(role, first) + content + suffix(role)`. The pieces come from rendering
the tokenizer's Jinja template around a sentinel content, so roles work for any model that ships a
template. The first message of a conversation gets its own prefix because templates often add
something there (a BOS text, or a default system prompt when the conversation does not open with one,
as SmolLM2's does). `stop` is the assistant's end-of-turn text, added to every gen's stop strings.

A tokenizer without a template gets `ChatTemplate.plain()` ("USER: ...\n").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
_SENTINEL = "\u2063LOOMLM-CONTENT\u2063"
_OTHER = "\u2063LOOMLM-OTHER\u2063"


@dataclass(frozen=True)
class ChatTemplate:
    prefixes: Mapping[str, str]  # role -> text before a message that is not the first
    suffixes: Mapping[str, str]  # role -> text after a message
    first_prefixes: Mapping[str, str]  # role -> text before the conversation's first message
    stop: tuple[str, ...] = ()  # end-of-turn strings that stop a gen
    name: str = "tokenizer"

    def prefix(self, role: str, first: bool) -> str:
        self._check(role)
        return (self.first_prefixes if first else self.prefixes)[role]

    def suffix(self, role: str) -> str:
        self._check(role)
        return self.suffixes[role]

    @staticmethod
    def _check(role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")

    def render(self, messages: list[dict[str, str]]) -> str:
        """The text these pieces give for a conversation (tests compare it with the tokenizer's)."""
        return "".join(
            self.prefix(m["role"], i == 0) + m["content"] + self.suffix(m["role"]) for i, m in enumerate(messages)
        )

    @classmethod
    def plain(cls) -> ChatTemplate:
        prefixes = {"system": "SYSTEM: ", "user": "USER: ", "assistant": "ASSISTANT: "}
        return cls(prefixes, {r: "\n" for r in ROLES}, prefixes, (), name="plain")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatTemplate:
        if not getattr(tokenizer, "chat_template", None):
            return cls.plain()

        def render(messages: list[dict[str, str]]) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False)

        def split(text: str, role: str) -> tuple[str, str]:
            if text.count(_SENTINEL) != 1:
                raise ValueError(f"the chat template does not render a {role} message's content verbatim")
            before, after = text.split(_SENTINEL)
            return before, after

        first_prefixes, suffixes, prefixes = {}, {}, {}
        for role in ROLES:
            first_prefixes[role], suffixes[role] = split(render([{"role": role, "content": _SENTINEL}]), role)
            # A later message: the rendering of [opener, role] past the rendering of [opener].
            opener = {"role": "user" if role == "system" else "system", "content": _OTHER}
            try:
                base = render([opener])
                full = render([opener, {"role": role, "content": _SENTINEL}])
            except Exception:  # templates may refuse e.g. a system message after a user message
                base, full = "", render([{"role": role, "content": _SENTINEL}])
            rest = full[len(base) :] if full.startswith(base) else full
            prefixes[role], tail = split(rest, role)
            if tail != suffixes[role]:
                suffixes[role] = tail
        end_of_turn = suffixes["assistant"].strip()
        stop = (end_of_turn,) if end_of_turn else ()
        return cls(prefixes, suffixes, first_prefixes, stop)
