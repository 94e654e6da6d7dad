"""Token counting that works offline.

OpenAI models: tiktoken's engine with the `o200k_base` and `cl100k_base` tables that the
`bpe-openai` package ships (tiktoken itself downloads them at first use, which fails offline).
Chat examples are counted as OpenAI's cookbook counts them: each message costs 3 tokens plus its
content (plus 1 with a name), and the example 3 more. Local models: the model's own tokenizer and
chat template.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from ..errors import ConvtuneError
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
    """tiktoken's BPE engine for `name`, built from the table bpe-openai ships.

    Only the engine (`CoreBPE`) is kept: `tiktoken.Encoding` would also keep the Python dict of
    ranks alive (about 15 MB for cl100k_base), which counting never needs again.
    """
    from tiktoken._tiktoken import CoreBPE

    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or spec.origin is None:
        raise ConvtuneError(
            "token counting needs the bpe-openai package", hint="pip install bpe-openai"
        )
    table = Path(spec.origin).parent / "data" / f"{name}.tiktoken.gz"
    return CoreBPE(_ranks(name, table), _SPECIAL[name], _PATTERNS[name])


def _ranks(name: str, table: Path) -> dict[bytes, int]:
    """The encoding's ranks; parsed from the gzipped base64 table once, then read from a
    `marshal` copy in the data directory (15 ms instead of 95: it starts every counting process).
    """
    import marshal
    import os

    from ..home import data_dir

    cache = data_dir() / "cache" / f"{name}.ranks.marshal"
    try:
        ranks = marshal.loads(cache.read_bytes())
        if isinstance(ranks, dict) and len(ranks) > 1000:
            return ranks
    except (OSError, ValueError, EOFError, TypeError):
        pass
    ranks = {}
    with gzip.open(table, "rb") as f:
        for line in f:  # line by line: no second copy of the whole table
            token, _, rank = line.partition(b" ")
            if token:
                ranks[base64.b64decode(token)] = int(rank)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_bytes(marshal.dumps(ranks))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only data directory only costs the parse next time
    return ranks


class OpenAICounter:
    """An OpenAI encoding, with a small cache: a message recurs in every window it falls in."""

    def __init__(self, encoding: str) -> None:
        if encoding not in _PATTERNS:
            raise ConvtuneError(f"unknown encoding {encoding!r}")
        self.name = encoding
        self._cache: dict[str, int] = {}

    def _encode(self, text: str) -> list[int]:
        # Loaded at first use: when a child process counts, this process never needs the tables.
        encode = _tiktoken_encoding(self.name).encode_ordinary
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


class CountingProcess:
    """Counts batches of strings in a child process, so counting overlaps the pipeline's work.

    `submit` never blocks (a thread feeds the child's stdin); `result` returns the counts of the
    oldest batch not yet returned. On a 2-core machine this takes the token count, the slowest
    step of `prepare`, off the critical path.
    """

    def __init__(self, encoding: str) -> None:
        import queue
        import subprocess
        import sys
        import threading

        self._child = subprocess.Popen(
            [sys.executable, "-m", "convtune.dataset.token_process", encoding],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        from .token_process import write_frame

        stdin = self._child.stdin
        try:
            while (texts := self._outbox.get()) is not None:
                write_frame(stdin, texts)
        except (BrokenPipeError, OSError):
            pass  # the child died; result() reports it
        finally:
            with contextlib.suppress(OSError):
                stdin.close()  # type: ignore[union-attr]

    def submit(self, texts: list[str]) -> None:
        self._outbox.put(texts)

    def result(self) -> list[int]:
        from .token_process import read_frame

        counts = read_frame(self._child.stdout)
        if counts is None:
            self._child.wait(timeout=5)
            detail = (self._child.stderr.read() or b"").decode(errors="replace").strip()  # type: ignore[union-attr]
            last = detail.splitlines()[-1] if detail else f"exit code {self._child.returncode}"
            raise ConvtuneError(f"the token counting process stopped: {last}")
        return counts  # type: ignore[return-value]

    def count_many(self, texts: list[str]) -> list[int]:
        """Counts of a few strings, synchronously (only when no batch is in flight)."""
        self.submit(texts)
        return self.result()

    def close(self) -> None:
        self._outbox.put(None)
        self._feeder.join(timeout=5)
        try:
            self._child.wait(timeout=5)
        except Exception:  # pragma: no cover - only if the child hangs
            self._child.kill()
            self._child.wait()
        for stream in (self._child.stdout, self._child.stderr):
            if stream is not None:
                stream.close()
