"""Token counting that works offline.

OpenAI models: tiktoken's engine with the `o200k_base` and `cl100k_base` tables that the
`bpe-openai` package ships (tiktoken itself downloads them at first use, which fails offline).
Chat examples are counted as OpenAI's cookbook counts them: each message costs 3 tokens plus its
content (plus 1 with a name), and the example 3 more. Local models: the model's own tokenizer and
chat template.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from .errors import ConvtuneError
from .modelinfo import ModelInfo

# The pre-tokenizer patterns of the two encodings, as OpenAI publishes them in tiktoken.
_PATTERNS = {
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_SPECIAL = {
    "cl100k_base": {"<|endoftext|>": 100257, "<|endofprompt|>": 100276},
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_EXAMPLE = 3


class TokenCounter(Protocol):
    """Counts the tokens of examples the way the target model will see them."""

    name: str

    def count(self, text: str) -> int: ...

    def count_messages(self, messages: list[dict]) -> int: ...

    def count_prompt_completion(self, prompt: str, completion: str) -> int: ...


@lru_cache(maxsize=4)
def _tiktoken_encoding(name: str):
    import tiktoken

    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or spec.origin is None:
        raise ConvtuneError(
            "token counting needs the bpe-openai package", hint="pip install bpe-openai"
        )
    table = Path(spec.origin).parent / "data" / f"{name}.tiktoken.gz"
    ranks: dict[bytes, int] = {}
    with gzip.open(table, "rb") as f:
        for line in f.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name, pat_str=_PATTERNS[name], mergeable_ranks=ranks, special_tokens=_SPECIAL[name]
    )


class OpenAICounter:
    """An OpenAI encoding, with a small cache: a message recurs in every window it falls in."""

    def __init__(self, encoding: str) -> None:
        self.name = encoding
        self._encode = _tiktoken_encoding(encoding).encode_ordinary
        self._cache: dict[str, int] = {}

    def count(self, text: str) -> int:
        n = self._cache.get(text)
        if n is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            n = self._cache[text] = len(self._encode(text))
        return n

    def count_messages(self, messages: list[dict]) -> int:
        total = TOKENS_PER_EXAMPLE
        for m in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in m.items():
                if isinstance(value, str) and key != "weight":
                    total += self.count(value)
                    if key == "name":
                        total += TOKENS_PER_NAME
        return total

    def count_prompt_completion(self, prompt: str, completion: str) -> int:
        return len(self._encode(prompt)) + len(self._encode(completion))


class HuggingFaceCounter:
    """A local model's tokenizer; chat examples go through its chat template."""

    def __init__(self, path: Path) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ConvtuneError(
                "counting with a local model needs transformers",
                hint="pip install 'convtune[local]'",
            ) from None
        try:
            if path.suffix == ".gguf":
                self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise ConvtuneError(f"cannot load a tokenizer from {path}: {exc}") from None
        self.name = f"tokenizer of {path.name}"

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_messages(self, messages: list[dict]) -> int:
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(plain, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
        return sum(self.count(m["content"]) for m in plain)

    def count_prompt_completion(self, prompt: str, completion: str) -> int:
        return self.count(prompt + completion)


def counter_for(model: ModelInfo) -> TokenCounter:
    if model.local_path is not None:
        return HuggingFaceCounter(model.local_path)
    assert model.encoding is not None
    return OpenAICounter(model.encoding)


class LegacyTokens:
    """Exact token counts of prompt/completion examples built from a window of messages.

    The prompt `A: x\\nB: y\\nB:` is cut by the encodings' pre-tokenizers at each `\\n` that
    precedes a label starting with a letter or digit, and after each `:` that precedes a space,
    so its count is the sum of the counts of `A:`, ` x\\n`, `B:`, ` y\\n` and the final `B:`.
    Each message's ` text\\n` is then counted once, not once per window it falls in (six times
    with the default context of 5). A test compares this with counting the whole strings.
    """

    def __init__(self, counter: OpenAICounter, actors: tuple[str, str], stop: bool) -> None:
        self.count = counter.count
        self.labels = {
            "user": counter.count(f"{actors[0]}:"),
            "assistant": counter.count(f"{actors[1]}:"),
        }
        self.stop = counter.count(f"{actors[0]}: ") if stop else None

    @staticmethod
    def applies(counter: TokenCounter, actors: tuple[str, str]) -> bool:
        return isinstance(counter, OpenAICounter) and all(a[:1].isalnum() for a in actors)

    def example(self, window: list, voice: bool) -> int:
        """Tokens of the example whose context is `window[:-1]` and reply `window[-1]`."""
        count = self.count
        *context, reply = window
        total = 0
        if not voice:
            labels = self.labels
            for m in context:
                total += labels[m.role] + count(f" {m.text}\n")
            total += labels["assistant"]
        if self.stop is None:
            return total + count(f" {reply.text}")
        return total + count(f" {reply.text}\n") + self.stop
