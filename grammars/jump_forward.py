"""Jump-forward decoding (SGLang's compressed FSM): append a forced continuation without sampling it.

When the guide's state has a unique continuation (JSON keys, punctuation, the rest of an enum value),
those bytes need no model choice. `plan_jump` turns them into tokens the way the tokenizer itself
would spell the text: it re-tokenizes the last sampled token together with the forced text (so e.g.
`{"` + `name": "` becomes the tokenizer's own `{"name": "` tokens rather than a sampled fragment
followed by a separately tokenized tail) and returns the replacement, with the guide state after it.

Safety: the plan is checked token by token against the guide, so a jump can never leave the language;
if the tokenizer's encoding does not reproduce the bytes exactly (normalisers, prefix spaces), the
plan falls back to encoding the forced text alone, and then to no jump. Only whole UTF-8 characters
are jumped; a forced partial character is left to sampling.

Only the `Guide` protocol is used (`forced_bytes`, `advance`, `vocab`), so any guide can jump forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loomlm.grammars.guide_protocol import REJECTED, Guide


@dataclass(frozen=True)
class JumpPlan:
    """Replace the last `num_replaced` output tokens (0 or 1) by `tokens`; the guide is then in `state`."""

    num_replaced: int
    tokens: tuple[int, ...]
    state: Any  # a state of the guide the plan was made with


def _complete_utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` ending at a character boundary (data is valid UTF-8 up
    to a possibly truncated last character)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            data[:cut].decode("utf-8")
            return cut
        except UnicodeDecodeError:
            continue
    return 0


def plan_jump(
    guide: Guide,
    state_before_last: Any,
    last_token: int,
    state_after_last: Any,
    encode: Callable[[str], Sequence[int]],
    max_tokens: int,
) -> JumpPlan | None:
    """A jump from `state_after_last` (after `last_token` was sampled in `state_before_last`), using at
    most `max_tokens` tokens in all; None when nothing (whole) is forced or no safe plan exists."""
    forced = guide.forced_bytes(state_after_last)
    if not forced or max_tokens <= 1:
        return None
    vocab = guide.vocab
    last = vocab.token_bytes[last_token]
    # First choice: re-tokenize the last token with the forced text.
    data = last + forced
    cut = _complete_utf8_prefix(data)
    if cut > len(last):
        plan = _try(guide, state_before_last, data[:cut], encode, 1, max_tokens)
        if plan is not None:
            return plan
    # Fallback: the forced text alone, appended after the sampled token.
    cut = _complete_utf8_prefix(forced)
    if cut == 0:
        return None
    return _try(guide, state_after_last, forced[:cut], encode, 0, max_tokens - 1)


def plan_prefix_jump(
    guide: Guide, state: Any, encode: Callable[[str], Sequence[int]], max_tokens: int
) -> JumpPlan | None:
    """A jump before anything was sampled (the output must start with forced text, e.g. `{"`):
    the forced text's own tokens, appended to the prompt's output before its prefill."""
    forced = guide.forced_bytes(state)
    cut = _complete_utf8_prefix(forced)
    if cut == 0 or max_tokens < 1:
        return None
    return _try(guide, state, forced[:cut], encode, 0, max_tokens)


def _try(
    guide: Guide, state: Any, data: bytes, encode: Callable[[str], Sequence[int]], num_replaced: int, max_tokens: int
) -> JumpPlan | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # starts inside a character (the previous token split it)
        return None
    tokens = [int(t) for t in encode(text)]
    if not tokens or guide.vocab.decode_bytes(tokens) != data:
        return None
    # The tail of a long jump is dropped rather than overrunning the token limit; the guide state
    # follows the tokens actually kept.
    tokens = tokens[:max_tokens]
    eos = guide.vocab.eos_token_ids
    for t in tokens:
        if t in eos:  # a jump spells forced text; it never ends the output
            return None
        state = guide.advance(state, t)
        if state is REJECTED:
            return None
    if num_replaced == 1 and len(tokens) == 1:
        return None  # re-tokenizing only reproduced the sampled token, nothing was added
    return JumpPlan(num_replaced, tuple(tokens), state)
