"""Offline token counts: the rank tables, their cache, and agreement with bpe-openai's engine."""

from __future__ import annotations

import bpe_openai
import pytest

from convtune.dataset import encodings, tokens


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_counts_agree_with_bpe_openai(encoding):
    counter = tokens.OpenAICounter(encoding)
    reference = bpe_openai.get_encoding(encoding)
    for text in [
        "Hello world!",
        "¿Qué tal?\nBien.",
        "  spaces  and\ttabs ",
        "12345 678",
        "emoji 🚲✨",
    ]:
        assert counter.count(text) == len(reference.encode(text))


def test_rank_table_is_cached_and_a_broken_cache_is_rebuilt(isolated_home):
    encodings.tiktoken_encoding.cache_clear()
    cache = isolated_home / "cache" / "cl100k_base.ranks.marshal"
    assert not cache.exists()
    first = encodings.tiktoken_encoding("cl100k_base").encode_ordinary("Hello world")
    assert cache.stat().st_size > 1_000_000
    cache.write_bytes(b"not marshal data")
    encodings.tiktoken_encoding.cache_clear()
    assert encodings.tiktoken_encoding("cl100k_base").encode_ordinary("Hello world") == first
    assert cache.stat().st_size > 1_000_000


def test_unknown_encoding_is_refused():
    with pytest.raises(tokens.ConvtuneError):
        tokens.OpenAICounter("p50k_base")
