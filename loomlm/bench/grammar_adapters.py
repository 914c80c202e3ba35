"""One interface over loomlm's guides, Outlines-core and XGrammar for `python -m loomlm.bench grammar`.

A `Library` is built once per tokenizer (its vocabulary set-up is timed as `setup_s`). For each case
`compiler(case)` does any untimed preparation (XGrammar: a fresh compiler with its cache off) and
returns the function whose call is the timed cold compile. `walker(compiled)` returns a `Walker` over
one trajectory: `fill()` writes the current state's packed allowed-token bitmask (bit t % 32 of int32
word t // 32, the layout all three libraries share) into a preallocated buffer; that call is the
timed mask operation. `advance(token)` moves on, outside the timed region.

Outlines-core is given the same raw token bytes as loomlm (its own `Vocabulary.from_pretrained` needs
the Hugging Face hub); XGrammar reads the tokenizer itself, so it is an independent check of loomlm's
byte decoding.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from loomlm.bench.grammar_workload import JSON_SCHEMA, Case

LIBRARIES = ("loomlm", "outlines_core", "xgrammar")
_DISTRIBUTIONS = {"loomlm": "loomlm", "outlines_core": "outlines-core", "xgrammar": "xgrammar"}


def version_of(name: str) -> str | None:
    try:
        return importlib.metadata.version(_DISTRIBUTIONS[name])
    except importlib.metadata.PackageNotFoundError:
        return None


class Walker:
    """Walks one compiled grammar. `fill` is the timed call; `mask()` reads what it wrote."""

    fill: Callable[[], Any]

    def mask(self) -> np.ndarray:  # int32 [W], valid after fill()
        raise NotImplementedError

    def advance(self, token: int) -> bool:  # False when the library rejects the token
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class Library:
    name: str
    setup_s: float

    def compiler(self, case: Case, timeout_s: float) -> Callable[[], Any]:
        raise NotImplementedError

    def walker(self, compiled: Any) -> Walker:
        raise NotImplementedError

    def describe(self, compiled: Any) -> str:
        return ""


# ---- loomlm ------------------------------------------------------------------------------------------


class _LoomlmWalker(Walker):
    """The engine's masking path: `ConstraintMasks.fill_bitmask` of a batch of one sampler row (the
    arena gather into a preallocated [B, W] buffer); `fill_numpy` is the guide's own
    `fill_bitmask` into a preallocated array."""

    def __init__(self, guide: Any):
        from loomlm.grammars import REJECTED
        from loomlm.grammars.guide_protocol import bitmask_words
        from loomlm.runtime.constrained import ConstraintMasks, GrammarState

        self.guide = guide
        self.rejected = REJECTED
        self.gs = GrammarState(guide)
        self.masks = ConstraintMasks(guide.vocab.size, 1, torch.device("cpu"))
        self.masks.begin(0, self.gs)
        rows = np.zeros(1, dtype=np.int64)
        self.nbuf = np.empty(bitmask_words(guide.vocab.size), dtype=np.int32)
        fill_bitmask, guide_fill = self.masks.fill_bitmask, guide.fill_bitmask
        gs = self.gs

        def fill() -> None:
            fill_bitmask(rows)

        def fill_numpy() -> None:
            guide_fill(gs.state, nbuf)

        nbuf = self.nbuf
        self.fill, self.fill_numpy = fill, fill_numpy

    def mask(self) -> np.ndarray:
        return self.masks.bitmask(1)[0].numpy()

    def numpy_mask(self) -> np.ndarray:
        return self.nbuf

    def advance(self, token: int) -> bool:
        state = self.guide.advance(self.gs.state, token)
        if state is self.rejected:
            return False
        self.gs.state = state
        self.masks.update(0)
        return True

    def reset(self) -> None:
        self.gs.state = self.guide.initial_state
        self.masks.update(0)


class Loomlm(Library):
    name = "loomlm"

    def __init__(self, tokenizer: Any):
        from loomlm.grammars import Vocabulary
        from loomlm.grammars.token_index import token_trie

        start = time.perf_counter()
        self.vocab = Vocabulary.from_tokenizer(tokenizer)
        token_trie(self.vocab)  # built once per vocabulary, like XGrammar's TokenizerInfo
        self.setup_s = time.perf_counter() - start

    def compiler(self, case: Case, timeout_s: float) -> Callable[[], Any]:
        from loomlm.grammars import GrammarLimits, compile_json_schema, compile_regex

        limits = GrammarLimits(max_seconds=timeout_s)
        text, vocab = case.spec_text, self.vocab
        if case.kind == JSON_SCHEMA:
            return lambda: compile_json_schema(text, vocab, limits=limits)
        return lambda: compile_regex(text, vocab, limits)

    def walker(self, compiled: Any) -> Walker:
        return _LoomlmWalker(compiled)

    def describe(self, compiled: Any) -> str:
        return f"{compiled.num_states} states"


# ---- Outlines-core -----------------------------------------------------------------------------------


class _OutlinesWalker(Walker):
    def __init__(self, index: Any, width: int):
        import outlines_core

        self.guide = outlines_core.Guide(index)
        self.buf = torch.zeros((1, width), dtype=torch.int32)
        write, ptr, numel = self.guide.write_mask_into, self.buf.data_ptr(), self.buf.numel()
        self.fill = lambda: write(ptr, numel, 4)

    def mask(self) -> np.ndarray:
        return self.buf[0].numpy()

    def advance(self, token: int) -> bool:
        try:
            self.guide.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def reset(self) -> None:
        self.guide.reset()


class OutlinesCore(Library):
    name = "outlines_core"

    def __init__(self, tokenizer: Any, token_bytes: tuple[bytes, ...], eos_token_id: int):
        import outlines_core

        start = time.perf_counter()
        tokens: dict[bytes, list[int]] = {}
        for i, b in enumerate(token_bytes):
            if b and i != eos_token_id:
                tokens.setdefault(b, []).append(i)
        self.vocabulary = outlines_core.Vocabulary(eos_token_id, tokens)
        self.setup_s = time.perf_counter() - start
        self.width = (len(token_bytes) + 31) // 32

    def compiler(self, case: Case, timeout_s: float) -> Callable[[], Any]:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        text, vocabulary = case.spec_text, self.vocabulary
        if case.kind == JSON_SCHEMA:
            return lambda: outlines_core.Index(build_regex_from_schema(text), vocabulary)
        return lambda: outlines_core.Index(text, vocabulary)

    def walker(self, compiled: Any) -> Walker:
        return _OutlinesWalker(compiled, self.width)


# ---- XGrammar ----------------------------------------------------------------------------------------


class _XGrammarWalker(Walker):
    def __init__(self, compiled: Any, vocab_size: int):
        import xgrammar

        self.matcher = xgrammar.GrammarMatcher(compiled)
        self.buf = xgrammar.allocate_token_bitmask(1, vocab_size)
        fill, buf = self.matcher.fill_next_token_bitmask, self.buf
        self.fill = lambda: fill(buf)

    def mask(self) -> np.ndarray:
        return self.buf[0].numpy()

    def advance(self, token: int) -> bool:
        return bool(self.matcher.accept_token(token))

    def reset(self) -> None:
        self.matcher.reset()


class XGrammar(Library):
    """`any_whitespace=False` (the default) compiles JSON with XGrammar's compact separators
    `", "` / `": "`, the closest to loomlm's and Outlines-core's bounded-whitespace JSON."""

    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, any_whitespace: bool = False):
        import xgrammar

        start = time.perf_counter()
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.setup_s = time.perf_counter() - start
        self.vocab_size = vocab_size
        self.any_whitespace = any_whitespace

    def compiler(self, case: Case, timeout_s: float) -> Callable[[], Any]:
        import xgrammar

        compiler = xgrammar.GrammarCompiler(self.info, cache_enabled=False)  # cold: nothing cached
        text = case.spec_text
        if case.kind == JSON_SCHEMA:
            any_ws = self.any_whitespace
            return lambda: compiler.compile_json_schema(text, any_whitespace=any_ws)
        return lambda: compiler.compile_regex(text)

    def walker(self, compiled: Any) -> Walker:
        return _XGrammarWalker(compiled, self.vocab_size)


def load_libraries(
    tokenizer: Any, names: list[str], xgrammar_any_whitespace: bool = False
) -> tuple[list[Library], dict[str, str]]:
    """The libraries of `names` that import, loomlm first, and {name: version or why it is missing}."""
    out: list[Library] = []
    status: dict[str, str] = {}
    loomlm = Loomlm(tokenizer)
    out.append(loomlm)
    status["loomlm"] = version_of("loomlm") or "source tree"
    eos = min(loomlm.vocab.eos_token_ids) if loomlm.vocab.eos_token_ids else 0
    for name in names:
        if name == "loomlm":
            continue
        try:
            if name == "outlines_core":
                out.append(OutlinesCore(tokenizer, loomlm.vocab.token_bytes, eos))
            elif name == "xgrammar":
                out.append(XGrammar(tokenizer, loomlm.vocab.size, xgrammar_any_whitespace))
            else:
                raise ValueError(f"unknown library {name!r}; choose from {', '.join(LIBRARIES)}")
            status[name] = version_of(name) or "installed"
        except ImportError as exc:
            status[name] = f"not installed ({exc.name or exc})"
    return out, status
