"""Checking fine-tuning datasets before anyone pays for training.

`validate` looks at one parsed JSONL record and adds findings (errors for what a service would
reject, warnings for what would train badly); `check_file` runs it over a file with line numbers
and adds the token statistics of `report`. Nothing here prints or exits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import OptionError
from .examples import SHAREGPT_ROLE
from .findings import Findings
from .jsonl import cr_line_endings, json_problem, read_lines
from .modelinfo import default_model, resolve_model
from .preference import pair_issue
from .report import DatasetReport, DatasetStats
from .tokens import TokenCounter, counter_for

CHAT_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
MESSAGE_KEYS = {"role", "content", "name", "weight"}
ROLES = ("system", "user", "assistant")
SHAREGPT_KEYS = {"conversations", "system", "tools"}
CR_LINE_ENDINGS = (
    "lines end in CR alone (old Mac line endings), so the file reads as one line:"
    " save it with LF or CRLF line endings"
)


PREFERENCE_KEYS = ("preferred_output", "non_preferred_output")


def detect_format(record: object) -> str | None:
    """The dataset format a record is written in, from its keys (either of preference data's
    outputs makes it preference data, so that a line missing the other is told so; `input`
    alone does not: other tools' `input`/`output` lines are no format of convtune's)."""
    if not isinstance(record, dict):
        return None
    if any(key in record for key in PREFERENCE_KEYS):
        return "preference"
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "prompt" in record or "completion" in record:
        return "prompt-completion"
    return None


def validate(record: dict, fmt: str, findings: Findings, line: int) -> bool:
    """Add this record's problems to `findings`; True when it has no error."""
    before = sum(f.count for f in findings.errors)
    {
        "chat": _chat,
        "prompt-completion": _prompt_completion,
        "sharegpt": _sharegpt,
        "preference": _preference,
    }[fmt](record, findings, line)
    return sum(f.count for f in findings.errors) == before


def _unknown_keys(record: dict, allowed: set[str], what: str, findings: Findings, line: int):
    for key in record:
        if key not in allowed:
            findings.error(
                f"unknown_key_{what}",
                f"unknown key in {what} (allowed: {', '.join(sorted(allowed))})",
                line,
                detail=repr(key),
            )


def _chat(record: dict, findings: Findings, line: int) -> None:
    _unknown_keys(record, CHAT_KEYS, "example", findings, line)
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        findings.error("no_messages", "'messages' must be a non-empty list", line)
        return
    trained = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            findings.error("message_not_object", "a message is not a JSON object", line)
            continue
        _unknown_keys(m, MESSAGE_KEYS, "message", findings, line)
        role = m.get("role")
        if "role" not in m:
            findings.error("missing_role", "a message has no 'role'", line)
        elif role not in ROLES:
            findings.error(
                "bad_role", "a role outside system, user and assistant", line, detail=repr(role)
            )
        elif role == "system" and i != 0:
            findings.error("system_not_first", "a system message that is not the first", line)
        content = m.get("content")
        if "content" not in m:
            findings.error("missing_content", "a message has no 'content'", line)
        elif not isinstance(content, str) or not content.strip():
            findings.error("empty_content", "a message with empty or non-text content", line)
        if "weight" in m:
            weight = m["weight"]
            if role != "assistant":
                findings.error("weight_not_assistant", "'weight' on a non-assistant message", line)
            elif isinstance(weight, bool) or weight not in (0, 1):
                findings.error("bad_weight", "'weight' must be 0 or 1", line, detail=repr(weight))
        if role == "assistant" and m.get("weight", 1) == 1:
            trained += 1
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        findings.error("no_assistant", "an example with no assistant message", line)
    elif trained == 0:
        findings.error("nothing_trained", "every assistant message has weight 0", line)


def _prompt_completion(record: dict, findings: Findings, line: int) -> None:
    _unknown_keys(record, {"prompt", "completion"}, "example", findings, line)
    for key in ("prompt", "completion"):
        if key not in record:
            findings.error(f"missing_{key}", f"no '{key}' key", line)
        elif not isinstance(record[key], str):
            findings.error(f"bad_{key}", f"'{key}' is not a string", line)
    completion = record.get("completion")
    if isinstance(completion, str):
        if not completion.strip():
            findings.error("empty_completion", "an empty completion", line)
        elif not completion.startswith(" "):
            findings.warning(
                "completion_no_space",
                "completions should start with a space (GPT-3 tokenizes ' word' as one token)",
                line,
            )


def _sharegpt(record: dict, findings: Findings, line: int) -> None:
    _unknown_keys(record, SHAREGPT_KEYS, "example", findings, line)
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        findings.error("no_conversations", "'conversations' must be a non-empty list", line)
        return
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            findings.error("turn_not_object", "a turn is not a JSON object", line)
            continue
        _unknown_keys(turn, {"from", "value"}, "turn", findings, line)
        who = turn.get("from")
        if who not in SHAREGPT_ROLE:
            findings.error(
                "bad_from", "a 'from' outside human, gpt and system", line, detail=repr(who)
            )
        elif who == "system" and i != 0:
            findings.error("system_not_first", "a system turn that is not the first", line)
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            findings.error("empty_content", "a turn with empty or non-text 'value'", line)
    if not any(isinstance(t, dict) and t.get("from") == "gpt" for t in turns):
        findings.error("no_assistant", "an example with no 'gpt' turn", line)


def _preference(record: dict, findings: Findings, line: int) -> None:
    """A preference (DPO) pair: `preference.pair_issue`'s rules, one error per line; a line
    with no rejected reply is a supervised row, which only convtune's trainer takes."""
    issue = pair_issue(record)
    if issue is not None:
        findings.error(issue.code, "not a valid preference pair", line, detail=issue.message)
    elif "non_preferred_output" not in record:
        findings.warning(
            "supervised_row",
            "lines with no non_preferred_output: supervised rows, which the local trainer trains"
            " as supervised fine-tuning; OpenAI refuses a preference file that has any",
            line,
        )


# -- Legacy actor delimiters ---------------------------------------------------------------------

LABEL_END = re.compile(r"(?:^|\n)([^\n:]{1,40}):$")
STOP_SEPARATOR = re.compile(r"\n([^\n:]{1,40}): $")


class LegacyDelimiters:
    """Learns the two actor labels of a prompt/completion file and flags them inside replies.

    The prompt ends with `\\n<actor 2>:` and, with the stop on, the completion with
    `\\n<actor 1>: `; a completion that says `Human:` itself would teach the model to speak for
    the other side.
    """

    def __init__(self) -> None:
        self.labels: set[str] = set()

    def __call__(self, record: dict, findings: Findings, line: int) -> None:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return
        body = completion
        if m := STOP_SEPARATOR.search(completion):
            self.labels.add(m.group(1))
            body = completion[: m.start()]
        if m := LABEL_END.search(prompt):
            self.labels.add(m.group(1))
        for label in sorted(self.labels):
            if f"{label}:" in body:
                findings.warning(
                    "delimiter_in_message",
                    "an actor delimiter such as 'Human:' inside a completion: the model would"
                    " learn to speak for the other side",
                    line,
                    detail=f"{label}:",
                )
                break


def file_format(path: str | Path) -> str | None:
    """The format of a dataset's first example (None: not one convtune knows), reading no more
    of the file than that line: what a command checks before it uploads anything."""
    return detect_format(next((record for _, record in _records(path)), None))


def format_and_actors(path: str | Path) -> tuple[str, tuple[str, str] | None]:
    """A dataset's format, and for legacy data the two actor labels it was written with (a
    model trained on it must be prompted with the same `Human:`/`AI:` protocol)."""
    first = next((record for _, record in _records(path)), None)
    fmt = detect_format(first) or "chat"
    if fmt != "prompt-completion" or not isinstance(first, dict):
        return fmt, None
    completion, prompt = first.get("completion"), first.get("prompt")
    stop = STOP_SEPARATOR.search(completion) if isinstance(completion, str) else None
    label = LABEL_END.search(prompt) if isinstance(prompt, str) else None
    return fmt, (stop.group(1) if stop else "Human", label.group(1) if label else "AI")


def _records(path: str | Path):
    """(line, parsed JSON) of each line that parses."""
    for number, text in read_lines(path):
        try:
            yield number, json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            continue


# -- Files ---------------------------------------------------------------------------------------


def example_tokens(record: dict, fmt: str, counter: TokenCounter) -> int:
    """An example's tokens. A preference pair's are its input's and both outputs' (each
    output is a reply to the same input: counted as the messages of the file's line)."""
    if fmt == "preference":
        outputs = record["preferred_output"] + record.get("non_preferred_output", [])
        return counter.count_messages(record["input"]["messages"] + outputs)
    if fmt == "chat":
        return counter.count_messages(record["messages"])
    if fmt == "sharegpt":
        messages = [
            {"role": SHAREGPT_ROLE[t["from"]], "content": t["value"]}
            for t in record["conversations"]
        ]
        if isinstance(record.get("system"), str):  # LLaMA-Factory's top-level system prompt
            messages.insert(0, {"role": "system", "content": record["system"]})
        return counter.count_messages(messages)
    return counter.count_prompt_completion(record["prompt"], record["completion"])


def check_file(
    path: str | Path,
    *,
    model: str | None = None,
    max_tokens: int | None = None,
    price_per_1m: float | None = None,
    training: bool = True,
    progress: Callable[[int], None] | None = None,  # called with the characters read so far
) -> DatasetReport:
    """Check a JSONL dataset: every error with its line, warnings, tokens and cost.

    The format (chat, prompt-completion, sharegpt, preference) is detected from the first
    example and is the report's `format`; a line in another format is an error. Examples with
    errors are not counted for tokens.
    """
    path = Path(path)
    if max_tokens is not None and max_tokens < 1:
        raise OptionError("--max-tokens must be a positive number of tokens")
    if price_per_1m is not None and price_per_1m < 0:
        raise OptionError("--price-per-1m cannot be negative")
    findings = Findings()
    counter: TokenCounter | None = None
    stats: DatasetStats | None = None
    fmt: str | None = None
    first_line = 0
    legacy = LegacyDelimiters()
    lines = read_lines(path)
    read = 0  # characters read, for progress
    for number, text in lines:
        read += len(text)
        if progress is not None and number % 1000 == 0:
            progress(read)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            if cr_line_endings(text, exc):  # the whole file came as this one line
                findings.error("cr_line_endings", CR_LINE_ENDINGS, number)
            else:
                findings.error("not_json", "not valid JSON", number, detail=json_problem(exc, text))
            continue
        except RecursionError:
            findings.error("not_json", "not valid JSON", number, detail="nested too deeply")
            continue
        if not isinstance(record, dict):
            findings.error("not_object", "a line that is not a JSON object", number)
            continue
        line_format = detect_format(record)
        if line_format is None:
            findings.error(
                "unknown_format",
                "no 'messages', 'prompt'/'completion', 'conversations' or 'preferred_output' key",
                number,
            )
            continue
        if fmt is None:
            fmt, first_line = line_format, number
            info = resolve_model(model or default_model(fmt))
            counter = counter_for(info)
            stats = DatasetStats(
                str(path),
                info,
                findings,
                tokenizer=counter.name,
                max_tokens=max_tokens,
                price_per_1m=price_per_1m,
                training=training,
            )
            stats.format = fmt
        elif line_format != fmt:
            findings.error(
                "mixed_formats",
                f"mixed formats: a {line_format} line in a {fmt} file (from line {first_line})",
                number,
            )
            continue
        if not validate(record, fmt, findings, number):
            continue
        if fmt == "prompt-completion":
            legacy(record, findings, number)
        assert stats is not None and counter is not None
        stats.add(text.strip(), number, example_tokens(record, fmt, counter))
    if stats is None:  # no valid example at all
        info = resolve_model(model or default_model("chat"))
        stats = DatasetStats(
            str(path),
            info,
            findings,
            tokenizer=None,
            max_tokens=max_tokens,
            price_per_1m=price_per_1m,
            training=False,  # the size and cost of nothing would only repeat the error
        )
        if not findings.errors:
            findings.error("empty_file", "the file has no examples")
    return stats.finish()
