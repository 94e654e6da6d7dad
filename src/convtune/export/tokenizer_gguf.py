"""A Hugging Face byte-level BPE tokenizer as GGUF metadata (`tokenizer.ggml.*`).

Written as llama.cpp's `convert_hf_to_gguf.py` writes a GPT-2-style vocabulary: model "gpt2",
one token string per id up to the model's vocabulary size (ids the tokenizer lacks become
`[PADn]`, unused), token types (normal, control for special added tokens, user-defined for the
other added tokens), the merges as "a b" strings, and the special ids.

`tokenizer.ggml.pre` names the pre-tokenizer: llama.cpp splits text with a regular expression it
picks by that name before applying the merges, and a wrong one tokenizes differently from
training (a model that reads digits one by one, shown whole numbers, answers worse).
convert_hf_to_gguf finds the name by hashing the tokenization of a test text; here it is read
from the tokenizer's own pre-tokenizer, for the shapes whose llama.cpp name is known, and any
other shape is refused rather than guessed.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConvtuneError
from .gguf_writer import Metadata, boolean, int32s, string, strings, uint32

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType


def tokenizer_metadata(tokenizer: Any, vocab_size: int) -> Metadata:
    """The `tokenizer.ggml.*` keys for `tokenizer`, padded to the model's `vocab_size` rows."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _byte_level(data):
        raise ConvtuneError(
            "cannot write this tokenizer to GGUF: convtune writes byte-level BPE tokenizers"
            " (GPT-2, Llama 3, Qwen2, SmolLM style), not sentencepiece ones",
            hint="use --format hf, then llama.cpp's convert_hf_to_gguf.py",
        )
    pre = pre_tokenizer_name(data.get("pre_tokenizer"))
    tokens, types = _tokens(tokenizer, data, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    meta: Metadata = {
        "tokenizer.ggml.model": string("gpt2"),
        "tokenizer.ggml.pre": string(pre),
        "tokenizer.ggml.tokens": strings(tokens),
        "tokenizer.ggml.token_type": int32s(types),
        "tokenizer.ggml.merges": strings(merges),
    }
    for key, token_id in (
        ("bos_token_id", tokenizer.bos_token_id),
        ("eos_token_id", tokenizer.eos_token_id),
        ("unknown_token_id", tokenizer.unk_token_id),
        ("padding_token_id", tokenizer.pad_token_id),
    ):
        if token_id is not None:
            meta[f"tokenizer.ggml.{key}"] = uint32(token_id)
    add_bos, add_eos = added_specials(tokenizer)
    meta["tokenizer.ggml.add_bos_token"] = boolean(add_bos)
    meta["tokenizer.ggml.add_eos_token"] = boolean(add_eos)
    return meta


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizers pre-tokenizer, or a one-line error."""
    parts = _flatten(pre)
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"  # digits one by one, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        name = _SPLITS.get((parts[0].get("pattern") or {}).get("Regex", ""))
        if name is not None:
            return name
    raise ConvtuneError(
        f"cannot write this tokenizer to GGUF: llama.cpp has no known name for its"
        f" pre-tokenizer ({' + '.join(str(k) for k in kinds) or 'none'})",
        hint="use --format hf, then llama.cpp's convert_hf_to_gguf.py",
    )


def added_specials(tokenizer: Any) -> tuple[bool, bool]:
    """Whether the tokenizer adds its bos / eos token to a text: seen, not read from a flag."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(ids) > len(plain) and ids[0] == bos
    add_eos = eos is not None and len(ids) > len(plain) and ids[-1] == eos
    return add_bos, add_eos


def _tokens(tokenizer: Any, data: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if by_id and max(by_id) >= vocab_size:
        raise ConvtuneError(
            f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embeddings"
        )
    added = {t["id"]: t for t in data.get("added_tokens") or []}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        elif index in added:
            special = added[index].get("special") or (
                token.startswith("<|") and token.endswith("|>")
            )
            tokens.append(added[index]["content"])
            types.append(CONTROL if special else USER_DEFINED)
        else:
            tokens.append(token)
            types.append(NORMAL)
    return tokens, types


def _flatten(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [p for child in pre.get("pretokenizers") or [] for p in _flatten(child)]
    return [pre]


def _byte_level(data: dict) -> bool:
    parts = _flatten(data.get("pre_tokenizer"))
    decoder = data.get("decoder") or {}
    return any(p.get("type") == "ByteLevel" for p in parts) or decoder.get("type") == "ByteLevel"
