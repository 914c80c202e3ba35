"""Vocabulary: token bytes from byte-level BPE, SentencePiece byte fallback and added tokens."""

from __future__ import annotations

import pytest

from loomlm.grammars.vocabulary import Vocabulary


def test_byte_level_tokens_are_raw_bytes(tokenizer) -> None:
    vocab = Vocabulary.from_tokenizer(tokenizer)
    assert vocab.size == len(tokenizer)
    assert vocab.eos_token_ids == {tokenizer.eos_token_id}
    for special in tokenizer.all_special_ids:
        assert vocab.token_bytes[special] == b""
    text = 'Héllo wörld 😀 {"a": [1, 2.5]}\n\t€'
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert vocab.decode_bytes(ids) == text.encode("utf-8")
    # The emoji is split over tokens that are partial UTF-8 on their own: never decode([id]).
    emoji_ids = tokenizer.encode("😀", add_special_tokens=False)
    assert len(emoji_ids) > 1 and any(not _is_utf8(vocab.token_bytes[i]) for i in emoji_ids)
    assert vocab.token_bytes[tokenizer.convert_tokens_to_ids("Ġthe")] == b" the"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_fingerprint_changes_with_content(tokenizer) -> None:
    a = Vocabulary.from_tokenizer(tokenizer)
    assert a.fingerprint == Vocabulary.from_tokenizer(tokenizer).fingerprint
    assert a.fingerprint != Vocabulary.from_tokenizer(tokenizer, eos_token_ids=[0, 2]).fingerprint
    assert Vocabulary.from_tokenizer(tokenizer, size=49280).size == 49280  # padded embedding rows


def test_sentencepiece_spelling() -> None:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "\u2581hello", "\u2581wor", "ld", "<0xC3>", "<0xA9>", "\u2581"]
    backend = Tokenizer(
        models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token="<unk>", byte_fallback=True)
    )
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    vocab = Vocabulary.from_tokenizer(tok)
    assert vocab.token_bytes[3] == b" hello" and vocab.token_bytes[5] == b"ld"
    assert vocab.token_bytes[6] == b"\xc3" and vocab.token_bytes[7] == b"\xa9"
    assert vocab.token_bytes[8] == b" "
    assert vocab.token_bytes[1] == b"" and vocab.token_bytes[2] == b"" and vocab.eos_token_ids == {2}


def test_from_dict_and_validation() -> None:
    vocab = Vocabulary.from_dict({0: "a", 2: b"\xff"}, eos_token_ids=[1])
    assert vocab.token_bytes == (b"a", b"", b"\xff")
    with pytest.raises(ValueError, match="EOS token id 7"):
        Vocabulary.from_dict({0: "a"}, eos_token_ids=[7])
