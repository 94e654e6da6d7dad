"""Token counting that works offline.

OpenAI models: tiktoken's engine with the `o200k_base` and `cl100k_base` tables that the
`bpe-openai` package ships (tiktoken itself downloads them at first use, which fails offline).
Chat examples are counted as OpenAI's cookbook counts them: each message costs 3 tokens plus its
content (plus 1 with a name), and the example 3 more. Local models: the model's own tokenizer and
chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import ConvtuneError
from .encodings import ENCODINGS, tiktoken_encoding
from .modelinfo import ModelInfo

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_EXAMPLE = 3


class TokenCounter(Protocol):
    """Counts the tokens of examples the way the target model will see them."""

    name: str

    def count(self, text: str) -> int: ...

    def count_messages(self, messages: list[dict]) -> int: ...

    def count_prompt_completion(self, prompt: str, completion: str) -> int: ...


class OpenAICounter:
    """An OpenAI encoding, with a small cache: a message recurs in every window it falls in."""

    def __init__(self, encoding: str) -> None:
        if encoding not in ENCODINGS:
            raise ConvtuneError(f"unknown encoding {encoding!r}")
        self.name = encoding
        self._cache: dict[str, int] = {}

    def _encode(self, text: str) -> list[int]:
        # Loaded at first use: when a child process counts, this process never needs the tables.
        encode = tiktoken_encoding(self.name).encode_ordinary
        self._encode = encode  # type: ignore[method-assign]
        return encode(text)

    def count(self, text: str) -> int:
        n = self._cache.get(text)
        if n is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            n = self._cache[text] = len(self._encode(text))
        return n

    def count_many(self, texts: list[str]) -> list[int]:
        return [self.count(t) for t in texts]

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


class MessageCounts:
    """Token counts of examples from per-message counts: each message is counted once.

    An example is a window of a conversation's messages, and with the default context of 5 a
    message falls in six windows; counting messages, not examples, does a sixth of the work, and
    lets the counting run in another process (`CountingProcess`) while the pipeline reads and
    writes. The sums are exact:
    - chat: OpenAI's cookbook count, 3 per example and, per message, 3 plus its role and content;
    - prompt-completion: the prompt `A: x\\nB: y\\nB:` is cut by the encodings' pre-tokenizers at
      each `\\n` before a label that starts with a letter or digit and after each `:` before a
      space, so it counts as `A:` + ` x\\n` + `B:` + ` y\\n` + `B:` (a hypothesis test compares
      this with counting whole strings).
    """

    def __init__(
        self, fmt: str, actors: tuple[str, str], *, stop: bool, voice: bool, system: str | None
    ) -> None:
        self.fmt = fmt
        self.actors = actors
        self.stop = stop
        self.voice = voice
        self.system = system

    def label_texts(self) -> list[str]:
        """The fixed strings whose counts `set_labels` needs (roles, or actor labels)."""
        if self.fmt == "chat":
            return ["user", "assistant", "system", self.system or ""]
        first, second = self.actors
        return [f"{first}:", f"{second}:", f"{first}: "]

    def set_labels(self, counts: list[int]) -> None:
        """Take the counts of `label_texts()`; asked separately so a child process can count them."""
        if self.fmt == "chat":
            user, assistant, role_system, content = counts
            self.role = {"user": user, "assistant": assistant}
            self.base = TOKENS_PER_EXAMPLE + (
                TOKENS_PER_MESSAGE + role_system + content if self.system else 0
            )
        else:
            user, assistant, stop_tokens = counts
            self.label = {"user": user, "assistant": assistant}
            self.stop_tokens = stop_tokens if self.stop else 0

    @staticmethod
    def applies(counter: TokenCounter | None, fmt: str, actors: tuple[str, str]) -> bool:
        if not isinstance(counter, OpenAICounter):
            return False
        return fmt == "chat" or (
            fmt == "prompt-completion" and all(a[:1].isalnum() for a in actors)
        )

    def texts(self, messages: list, out: list[str]) -> None:
        """Append the strings to count for one conversation (see `example` for their order)."""
        if self.fmt == "chat":
            out.extend(m.text for m in messages)
            return
        out.extend(f" {m.text}\n" for m in messages)
        if not self.stop:
            out.extend(f" {m.text}" for m in messages)

    def example(self, messages: list, counts: list[int], start: int, end: int) -> int:
        """Tokens of the example with context messages[start:end] and target messages[end]."""
        if self.fmt == "chat":
            role = self.role
            total = self.base
            for i in range(start, end + 1):
                total += TOKENS_PER_MESSAGE + role[messages[i].role] + counts[i]
            return total
        total = 0
        if not self.voice:
            label = self.label
            for i in range(start, end):
                total += label[messages[i].role] + counts[i]
            total += label["assistant"]
        if self.stop:
            return total + counts[end] + self.stop_tokens
        return total + counts[len(messages) + end]
