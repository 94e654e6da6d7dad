"""Preference data (DPO), in the shape OpenAI's preference fine-tuning takes.

One JSON line per pair:

    {"input": {"messages": [{"role": "user", "content": "..."}, ...]},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

`input` may also hold `tools` and `parallel_tool_calls`, as OpenAI's does; convtune keeps them
and trains on the messages. One extension of convtune's: a line with no `non_preferred_output`
is a supervised row (`prepare --allow-sft-rows`), which the local trainer learns as supervised
fine-tuning does; OpenAI refuses such a file, and `check` says so.

This module is the pure core: what a valid line is (`pair_problem`), the pair it holds
(`parse_pair`), and the line a pair is written as (`pair_record`). Reading a file with line
numbers is `read_pairs`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .jsonl import json_problem, read_lines

INPUT_ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """A conversation so far and two replies to it: the preferred and the rejected one.

    `rejected` is None for a supervised row. `line` is the JSONL line it came from (0 when it
    was built in memory)."""

    messages: list[dict[str, Any]]
    preferred: str
    rejected: str | None
    line: int = 0

    @property
    def supervised(self) -> bool:
        return self.rejected is None


def is_preference_record(record: Any) -> bool:
    """Whether a parsed JSON line is in the preference format (rather than chat's
    `messages`, ShareGPT's `conversations` or the legacy `prompt`)."""
    return isinstance(record, dict) and "input" in record and "preferred_output" in record


def _output(record: dict, key: str) -> tuple[str | None, Issue | None]:
    """The text of one output list (exactly one assistant message), or why it is not one."""
    value = record.get(key)
    if key not in record:
        return None, Issue(f"missing_{key}", f"no {key}")
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        return None, Issue(f"bad_{key}", f"{key} must be a list of one assistant message")
    message = value[0]
    if message.get("role") != "assistant":
        return None, Issue(
            f"bad_{key}",
            f"{key}'s message must have the role 'assistant', not {message.get('role')!r}",
        )
    content = message.get("content")
    if not isinstance(content, str):
        return None, Issue(f"bad_{key}", f"{key}'s content must be text")
    if not content.strip():
        return None, Issue(f"empty_{key}", f"{key} is empty")
    return content, None


@dataclass(frozen=True)
class Issue:
    """Why a line is not a valid pair: a stable code (for `check`'s findings) and the words."""

    code: str
    message: str


def pair_issue(record: Any) -> Issue | None:
    """Why a parsed JSON line is not a valid preference pair, with its code, or None."""
    if not isinstance(record, dict):
        return Issue("not_object", "a line must be a JSON object")
    unknown = sorted(set(record) - {"input", "preferred_output", "non_preferred_output"})
    if unknown:
        return Issue(
            "unknown_key_example",
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
        )
    given = record.get("input")
    if not isinstance(given, dict):
        return Issue("bad_input", "input must be an object with messages")
    messages = given.get("messages")
    if not isinstance(messages, list) or not messages:
        return Issue("no_messages", "input.messages must be a non-empty list")
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            return Issue("message_not_object", f"input message {n} must be an object")
        if message.get("role") not in INPUT_ROLES:
            return Issue(
                "bad_role",
                f"input message {n} has the role {message.get('role')!r};"
                f" expected one of {', '.join(INPUT_ROLES)}",
            )
        if not isinstance(message.get("content"), str):
            return Issue("bad_content", f"input message {n}'s content must be text")
    if messages[-1]["role"] != "user":
        return Issue(
            "last_not_user", "input's last message must be the user's (the outputs answer it)"
        )
    preferred, issue = _output(record, "preferred_output")
    if issue:
        return issue
    if "non_preferred_output" in record:
        rejected, issue = _output(record, "non_preferred_output")
        if issue:
            return issue
        if rejected == preferred:
            return Issue(
                "same_outputs",
                "preferred_output and non_preferred_output are the same: nothing to prefer",
            )
    return None


def pair_problem(record: Any) -> str | None:
    """Why a parsed JSON line is not a valid preference pair, or None."""
    issue = pair_issue(record)
    return issue.message if issue is not None else None


def parse_pair(record: Any, line: int = 0) -> PreferencePair:
    """The pair a valid line holds (`ValueError` with `pair_problem`'s words otherwise)."""
    problem = pair_problem(record)
    if problem is not None:
        raise ValueError(problem)
    rejected = record.get("non_preferred_output")
    return PreferencePair(
        messages=[
            {"role": m["role"], "content": m["content"]} for m in record["input"]["messages"]
        ],
        preferred=record["preferred_output"][0]["content"],
        rejected=rejected[0]["content"] if rejected else None,
        line=line,
    )


def pair_record(messages: list[dict[str, Any]], preferred: str, rejected: str | None) -> dict:
    """The JSON line of a pair (no `non_preferred_output` for a supervised row)."""
    record: dict[str, Any] = {
        "input": {"messages": messages},
        "preferred_output": [{"role": "assistant", "content": preferred}],
    }
    if rejected is not None:
        record["non_preferred_output"] = [{"role": "assistant", "content": rejected}]
    return record


def iter_pairs(path: str | Path) -> Iterator[PreferencePair]:
    """The pairs of a preference JSONL file; the first bad line is an `InputError` naming the
    file, the line and the problem."""
    path = Path(path)
    for number, text in read_lines(path):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"not valid JSON: {json_problem(exc, text)}", path=path, line=number
            ) from None
        if not is_preference_record(record):
            raise InputError(
                "not a preference line (input, preferred_output, non_preferred_output)",
                path=path,
                line=number,
                hint="DPO trains on preference data: convtune prepare --format preference",
            )
        try:
            yield parse_pair(record, number)
        except ValueError as exc:
            raise InputError(str(exc), path=path, line=number) from None


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Every pair of a preference file (an empty file is an error, not zero pairs)."""
    pairs = list(iter_pairs(path))
    if not pairs:
        raise InputError("no preference pairs", path=Path(path))
    return pairs
