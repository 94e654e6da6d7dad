"""Training examples as token ids and labels, from the JSONL files convtune writes.

The loss falls only where the model should learn (labels are -100 elsewhere):

- chat (``{"messages": [...]}``): each assistant reply, and the end-of-turn token after it
  (``<|im_end|>`` in ChatML) so that the model learns to stop; not the header that opens the
  turn (``<|im_start|>assistant\\n``, which the prompt supplies at inference), not system or user
  turns, not assistant turns with ``"weight": 0``;
- prompt-completion: the completion and an end-of-sequence token after it; the prompt is context;
- sharegpt: as chat, with every ``gpt`` turn trained.

Chat templates rarely mark the assistant's part (SmolLM2's has no ``{% generation %}``), so the
masks are found in the rendered text, for any template. The conversation is rendered whole and
tokenized once with character offsets. An assistant turn starts where the conversation before it,
rendered with the generation prompt, ends (a prefix of the whole text in every common template),
and its reply is that turn's message text; where the prefix rule fails (a template that injects
text only at the start, such as SmolLM2's default system prompt when the conversation starts with
an assistant message), the message text is searched in order in the rendered text. A token is
trained when it overlaps a trained span; the end-of-turn token is the first special token after
the reply, when only whitespace separates them.

Examples longer than ``max_length`` lose their oldest tokens (the trained reply is at the end)
and are counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dataset.check import detect_format
from ..dataset.examples import SHAREGPT_ROLE
from ..errors import ConvtuneError, InputError

IGNORE = -100  # the label of a position without loss (PyTorch's cross-entropy ignore_index)
ROLES = {"system", "user", "assistant"}


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # input_ids where the loss applies, IGNORE (-100) elsewhere


@dataclass
class DataStats:
    examples: int = 0  # examples kept
    tokens: int = 0  # input tokens of the kept examples (after truncation)
    trained_tokens: int = 0  # tokens with a loss: the replies and their end-of-turn tokens
    truncated: int = 0  # examples over max_length that lost their oldest tokens
    skipped: int = 0  # examples with nothing left to learn (no trained token), not kept
    format: str = "chat"
    skipped_lines: list[int] = field(default_factory=list)  # their line numbers (first 20)


def tokenize_file(
    path: str | Path, tokenizer: Any, *, max_length: int
) -> tuple[list[TokenizedExample], DataStats]:
    """Read a training JSONL file (chat, prompt-completion or sharegpt) and tokenize it."""
    path = Path(path)
    records = list(_read(path))
    if not records:
        raise InputError("no examples in the file", path=path)
    fmt = detect_format(records[0][1])
    if fmt is None:
        raise InputError(
            "not a chat, prompt-completion or sharegpt example",
            path=path,
            line=records[0][0],
            hint="convtune check FILE explains what is wrong",
        )
    try:
        return tokenize_records(records, tokenizer, max_length=max_length, fmt=fmt)
    except ConvtuneError as exc:
        if exc.path is None:
            exc.path = str(path)
        raise


def tokenize_records(
    records: Iterable[tuple[int, dict]] | Iterable[dict],
    tokenizer: Any,
    *,
    max_length: int,
    fmt: str | None = None,
) -> tuple[list[TokenizedExample], DataStats]:
    """Tokenize records (dicts, or ``(line number, dict)`` pairs) of one format."""
    numbered = [r if isinstance(r, tuple) else (i + 1, r) for i, r in enumerate(records)]
    if not numbered:
        return [], DataStats(format=fmt or "chat")
    fmt = fmt or detect_format(numbered[0][1]) or "chat"
    if max_length < 2:
        raise ConvtuneError(f"max_length must be at least 2, not {max_length}")
    if not getattr(tokenizer, "is_fast", False):
        raise ConvtuneError(
            "training needs a fast (Rust) tokenizer: this one gives no character offsets",
            hint="use a model folder with a tokenizer.json",
        )
    stats = DataStats(format=fmt)
    if fmt == "prompt-completion":
        texts, spans, append_eos = _prompt_completion(numbered)
        add_special = True
    else:
        texts, spans = _chats(numbered, tokenizer, sharegpt=fmt == "sharegpt")
        append_eos, add_special = False, False
    encodings = tokenizer(
        texts, add_special_tokens=add_special, return_offsets_mapping=True, verbose=False
    )
    special = _special_ids(tokenizer)
    eos = tokenizer.eos_token_id
    examples = []
    for k, (line, _) in enumerate(numbered):
        ids = list(encodings["input_ids"][k])
        labels = _labels(ids, encodings["offset_mapping"][k], texts[k], spans[k], special)
        if append_eos and eos is not None:
            if ids and ids[-1] == eos:  # the tokenizer ends sequences with it already
                labels[-1] = eos
            else:
                ids.append(eos)
                labels.append(eos)
        if len(ids) > max_length:
            ids, labels = ids[-max_length:], labels[-max_length:]
            stats.truncated += 1
        trained = sum(1 for label in labels[1:] if label != IGNORE)  # position 0 has no context
        if not trained:
            stats.skipped += 1
            if len(stats.skipped_lines) < 20:
                stats.skipped_lines.append(line)
            continue
        examples.append(TokenizedExample(ids, labels))
        stats.examples += 1
        stats.tokens += len(ids)
        stats.trained_tokens += trained
    return examples, stats


# -- reading ------------------------------------------------------------------------------------


def _read(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, errors need the line
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or exc}", path=path) from exc
    with f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InputError(f"not JSON: {exc}", path=path, line=number) from exc
            if not isinstance(record, dict):
                raise InputError("not a JSON object", path=path, line=number)
            yield number, record


# -- the trained spans, in characters of the text to tokenize ----------------------------------

Span = tuple[int, int, bool]  # start, end (of the reply), and whether an end-of-turn token follows


def _prompt_completion(
    numbered: list[tuple[int, dict]],
) -> tuple[list[str], list[list[Span]], bool]:
    texts, spans = [], []
    for line, record in numbered:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise InputError("prompt and completion must be strings", line=line)
        texts.append(prompt + completion)
        spans.append([(len(prompt), len(prompt) + len(completion), False)])
    return texts, spans, True


def _chats(
    numbered: list[tuple[int, dict]], tokenizer: Any, *, sharegpt: bool
) -> tuple[list[str], list[list[Span]]]:
    if not getattr(tokenizer, "chat_template", None):
        raise ConvtuneError(
            "the model's tokenizer has no chat template", hint="use an instruct (chat) model"
        )
    texts, spans = [], []
    for line, record in numbered:
        messages, trained = _messages(record, line, sharegpt=sharegpt)
        text, found = _chat_spans(messages, trained, tokenizer, line)
        texts.append(text)
        spans.append(found)
    return texts, spans


def _messages(record: dict, line: int, *, sharegpt: bool) -> tuple[list[dict], list[bool]]:
    """The conversation as role/content messages, and which of them are trained."""
    key = "conversations" if sharegpt else "messages"
    raw = record.get(key)
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{key!r} must be a non-empty list", line=line)
    messages, trained = [], []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise InputError(f"message {i} is not an object", line=line)
        if sharegpt:
            speaker = m.get("from")
            role = SHAREGPT_ROLE.get(speaker, speaker if speaker in ROLES else None)
            content = m.get("value")
            weight = 1
        else:
            role, content = m.get("role"), m.get("content")
            role = role if role in ROLES else None
            weight = m.get("weight", 1)
        if role is None or not isinstance(content, str):
            raise InputError(
                f"message {i}: unknown role or content that is not text",
                line=line,
                hint="convtune check FILE lists every problem",
            )
        messages.append({"role": role, "content": content})
        trained.append(role == "assistant" and weight != 0 and content != "")
    return messages, trained


def _chat_spans(
    messages: list[dict], trained: list[bool], tokenizer: Any, line: int
) -> tuple[str, list[Span]]:
    def render(msgs: list[dict], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)

    try:
        text = render(messages)
        spans = []
        for i in range(len(messages)):
            if not trained[i]:
                continue
            span = _turn(text, messages, i, render) if i > 0 else None
            if span is None:
                span = _search(text, messages, i)
            if span is None:
                raise InputError(
                    f"message {i}: the chat template changes the reply's text, so its tokens"
                    " cannot be found",
                    line=line,
                )
            spans.append(span)
    except ConvtuneError:
        raise
    except Exception as exc:  # jinja2 errors and the template's own raise_exception()
        raise InputError(
            f"the model's chat template rejects this conversation: {exc}", line=line
        ) from exc
    return text, spans


def _turn(text: str, messages: list[dict], i: int, render: Any) -> Span | None:
    """Message i's reply, its turn starting where the conversation before it ends (rendered
    with the generation prompt); None when that rendering is no prefix of the whole text."""
    try:
        prompt, through = render(messages[:i], True), render(messages[: i + 1])
    except Exception:  # a template that refuses a partial conversation: search instead
        return None
    if len(prompt) < len(through) and text.startswith(through) and through.startswith(prompt):
        return _reply_in(text, messages[i]["content"], len(prompt), len(through))
    return None


def _reply_in(text: str, content: str, start: int, end: int) -> Span:
    """The reply inside the turn text[start:end]: from the turn's start to the content's end."""
    for needle in (content, content.strip()):
        j = text.find(needle, start, end) if needle else -1
        if j >= 0:
            return (start, j + len(needle), True)
    return (start, len(text[:end].rstrip()), True)  # rewritten content: the whole turn


def _search(text: str, messages: list[dict], target: int) -> Span | None:
    """Find the messages' texts one after the other; the span of message `target`'s text."""
    cursor = 0
    for i, message in enumerate(messages[: target + 1]):
        content = message["content"]
        for needle in (content, content.strip()):
            j = text.find(needle, cursor) if needle else -1
            if j >= 0:
                cursor = j + len(needle)
                break
        else:
            if i == target:
                return None
            continue
        if i == target:
            return (j, cursor, True)
    return None


# -- from character spans to labels ------------------------------------------------------------


def _special_ids(tokenizer: Any) -> frozenset[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _labels(
    ids: list[int],
    offsets: list[tuple[int, int]],
    text: str,
    spans: list[Span],
    special: frozenset[int],
) -> list[int]:
    labels = [IGNORE] * len(ids)
    k = 0
    for start, end, end_of_turn in spans:  # spans are in order and do not overlap
        while k < len(ids) and (offsets[k][1] <= start or offsets[k][0] == offsets[k][1]):
            k += 1  # tokens before the span, and added tokens without text (a BOS)
        while k < len(ids) and offsets[k][0] < end:
            labels[k] = ids[k]
            k += 1
        at_end = end_of_turn and k < len(ids) and ids[k] in special
        if at_end and not text[end : offsets[k][0]].strip():
            labels[k] = ids[k]
            k += 1
    return labels
