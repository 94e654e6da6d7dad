"""What a model is asked and what it should answer, from a fine-tuning JSONL file.

Each example's reference is its last trained reply: the last assistant message without
`"weight": 0` (chat), the last `gpt` turn (sharegpt), or the completion (prompt-completion, with
its leading space and stop separator taken off); the prompt is every message before it. A
preference pair's prompt is its input's messages and its reference the preferred (chosen)
reply: a model is judged against the answers it was taught to prefer, and teacher forcing
scores those (its `record` is the chat example of input and preferred reply). A legacy
prompt (`Human: ...\\nAI: ...\\nHuman: ...\\nAI:`) is turned back into messages by its two actor
labels, so chat models and models trained on legacy data answer the same prompts (a local legacy
model renders them back into its protocol). A prompt without those labels (`"Hello there"`, or
OpenAI's legacy `"Summarize: ...\\n\\n###\\n\\n"`) is asked as one user message holding its text,
without the `###` separator that marks its end; text before the first label is kept, at the
start of the first user message (see `_legacy` for why).

An example whose prompt holds no text to ask (a reply that opens its conversation, a
prompt-completion line with an empty prompt) is counted and named, never asked as an empty
message; a file where no example asks anything is refused with the first one's line.

The file must pass `convtune check`'s rules: its first error is refused here with its line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..dataset.check import LABEL_END, STOP_SEPARATOR, check_file
from ..dataset.examples import SHAREGPT_ROLE
from ..dataset.findings import first_error
from ..dataset.jsonl import read_lines
from ..errors import InputError


@dataclass(frozen=True)
class Prompt:
    """One example of an evaluation: the conversation so far, and the reply it should get."""

    index: int  # 0-based, in file order
    line: int  # the line of the data file
    messages: tuple[tuple[str, str], ...]  # (role, content), the reference's context
    reference: str
    record: dict  # the example as the file has it (teacher forcing trains on these masks)

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def key(self) -> str:
        """A digest of the prompt: the same prompt in another file reuses a cached answer."""
        return hashlib.sha256(json.dumps(self.messages).encode()).hexdigest()[:32]


@dataclass
class EvalData:
    """A data file's prompts, and the lines of examples that ask nothing (a reply that opens
    its conversation: there is no message to answer), which no model is asked."""

    path: Path
    format: str
    prompts: list[Prompt]
    unasked: list[int]


def read_prompts(
    path: str | Path, *, limit: int | None = None, purpose: str = "evaluate"
) -> EvalData:
    """The file's prompts (the first `limit` examples); a file with errors is refused with the
    first error's line, as `convtune check` finds it. `purpose` names what the prompts are for
    in the message of a file that asks nothing ("evaluate", "record")."""
    path = Path(path)
    report = check_file(path, training=False)
    first = first_error(report.findings)
    if first is not None:
        raise first.to_error(path, hint=f"convtune check {path} lists every problem")
    fmt = report.format or "chat"
    prompts: list[Prompt] = []
    unasked: list[int] = []
    actors: tuple[str, str] | None = None
    for number, text in read_lines(path):
        if limit is not None and len(prompts) >= limit:
            break
        record = json.loads(text)
        if fmt == "prompt-completion":
            actors = actors or _actors(record)
            messages, reference = _legacy(record, actors)
        elif fmt == "preference":
            messages, reference = _pair(record)
            record = {"messages": [*record["input"]["messages"], *record["preferred_output"]]}
        else:
            messages, reference = _conversation(record, sharegpt=fmt == "sharegpt")
        if not any(role == "user" and content.strip() for role, content in messages):
            unasked.append(number)
            continue
        prompts.append(Prompt(len(prompts), number, messages, reference, record))
    if not prompts:
        raise InputError(
            f"no examples to {purpose}: none has a user message (or prompt text) before its reply",
            path=path,
            line=unasked[0] if unasked else None,
        )
    return EvalData(path, fmt, prompts, unasked)


def _conversation(record: dict, *, sharegpt: bool) -> tuple[tuple[tuple[str, str], ...], str]:
    if sharegpt:
        turns = [(SHAREGPT_ROLE[t["from"]], t["value"], 1) for t in record["conversations"]]
        if isinstance(record.get("system"), str):
            turns.insert(0, ("system", record["system"], 0))
    else:
        turns = [(m["role"], m["content"], m.get("weight", 1)) for m in record["messages"]]
    last = max(i for i, (role, _, weight) in enumerate(turns) if role == "assistant" and weight)
    messages = tuple((role, content) for role, content, _ in turns[:last])
    return messages, turns[last][1]


def _pair(record: dict) -> tuple[tuple[tuple[str, str], ...], str]:
    """A preference pair's input messages, and its preferred reply."""
    messages = tuple((m["role"], m["content"]) for m in record["input"]["messages"])
    return messages, record["preferred_output"][0]["content"]


def _actors(record: dict) -> tuple[str, str]:
    stop = STOP_SEPARATOR.search(record.get("completion", ""))
    label = LABEL_END.search(record.get("prompt", ""))
    return (stop.group(1) if stop else "Human", label.group(1) if label else "AI")


# OpenAI's legacy guide ends each prompt with a fixed separator, "\n\n###\n\n": it marks
# where the completion starts and is no part of what is asked
PROMPT_SEPARATOR = re.compile(r"\s*(?:^|\n)###\s*$")


def _legacy(record: dict, actors: tuple[str, str]) -> tuple[tuple[tuple[str, str], ...], str]:
    """A prompt back into messages; the completion without its space and stop.

    convtune's own prompts (`Human: a\\nAI: b\\nHuman: c\\nAI:`) become the turns they were
    written from. Text before the first label (instructions above the dialogue) is prepended to
    the first user message, on a line of its own, rather than made a system message: a legacy
    model (a local one, and its export for llama.cpp or Ollama) is prompted with its user and
    assistant turns only and leaves system messages out, so a preamble as a system message would
    never reach it, while in the first message every model reads it, in the order the original
    prompt has it. A prompt without labels is one user message holding its text, without a
    trailing `###` separator. What holds no text gives no message: the example asks nothing.
    """
    first, second = actors
    completion = record["completion"]
    if (stop := STOP_SEPARATOR.search(completion)) is not None:
        completion = completion[: stop.start()]
    reference = completion.strip()  # its leading space, a "\n" stop: answers are stripped too
    prompt = record["prompt"]
    ending = f"{second}:"
    if prompt.endswith(ending):
        prompt = prompt[: -len(ending)].rstrip("\n")
    roles = {first: "user", second: "assistant"}
    return tuple(_turns(prompt, roles)), reference


def _turns(prompt: str, roles: dict[str, str]) -> Iterator[tuple[str, str]]:
    """`Human: a\\nAI: b\\nHuman: c` as (role, text) pairs; a line that starts no turn belongs
    to the message before it (messages may span lines). Text before the first label opens the
    first user message; a prompt with no label at all is one user message (without its `###`
    separator)."""
    labels = "|".join(re.escape(label) for label in roles)
    parts = re.split(rf"(?:^|\n)({labels}): ", prompt)
    if len(parts) == 1:  # no labels: a plain prompt
        text = PROMPT_SEPARATOR.sub("", prompt).strip()
        if text:
            yield "user", text
        return
    preamble = parts[0] if parts[0].strip() else None
    for label, text in zip(parts[1::2], parts[2::2], strict=True):
        role = roles[label]
        if preamble is not None:
            if role != "user":
                yield "user", preamble
            else:
                text = f"{preamble}\n{text}"
            preamble = None
        yield role, text
