"""Findings: problems found in an input, counted by kind, with the first line numbers of each.

Checks never print or stop: they add findings here, and the front end decides what to show and
which exit code follows. A tally keeps a count and the first few line numbers of each kind, so
memory stays bounded however many times a problem repeats.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import InputError

Level = Literal["error", "warning"]

FIRST_LINES = 5  # line numbers kept per kind of finding


@dataclass
class Finding:
    """One kind of problem: how often it happened and where it happened first."""

    level: Level
    code: str
    message: str
    count: int = 0
    lines: list[int] = field(default_factory=list)
    example: str | None = None  # the first occurrence's own words, when they say more

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "code": self.code,
            "message": self.message,
            "count": self.count,
            "lines": self.lines,
            **({"example": self.example} if self.example else {}),
        }


@dataclass
class Findings:
    """All findings of one run, keyed by code, in the order they first appeared."""

    by_code: dict[str, Finding] = field(default_factory=dict)

    def add(
        self,
        level: Level,
        code: str,
        message: str,
        line: int | None = None,
        *,
        detail: str | None = None,
        count: int = 1,
    ) -> None:
        finding = self.by_code.get(code)
        if finding is None:
            finding = self.by_code[code] = Finding(level, code, message, example=detail)
        finding.count += count
        if line is not None and len(finding.lines) < FIRST_LINES:
            finding.lines.append(line)

    def error(self, code: str, message: str, line: int | None = None, **kw) -> None:
        self.add("error", code, message, line, **kw)

    def warning(self, code: str, message: str, line: int | None = None, **kw) -> None:
        self.add("warning", code, message, line, **kw)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.by_code.values() if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.by_code.values() if f.level == "warning"]

    def count(self, code: str) -> int:
        finding = self.by_code.get(code)
        return finding.count if finding else 0

    def to_list(self) -> list[Finding]:
        """The findings in the order they first appeared (reports keep this typed list)."""
        return list(self.by_code.values())


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 example', '2 examples', '1,000 conversations': a count with its noun in agreement."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def count(findings: Iterable[Finding], level: Level) -> int:
    """How many times problems of `level` happened (not how many kinds)."""
    return sum(f.count for f in findings if f.level == level)


@dataclass(frozen=True)
class FirstError:
    """The earliest error of a run and how many more there are: what a one-line refusal says.

    Every front end that refuses a file (prepare, a job's validation, an upload to a service or
    to `convtune serve`) words its refusal from this, so the same file gets the same message.
    """

    line: int | None
    message: str  # the finding's message, with its first occurrence's own words if any
    more: int  # errors besides this one

    def located(self) -> str:
        """'line 7: message', or the message alone when the problem has no line."""
        return (f"line {self.line}: " if self.line is not None else "") + self.message

    def more_text(self) -> str:
        """'1 more error', '3 more errors', or '' when there is none."""
        return counted(self.more, "more error", "more errors") if self.more else ""

    def to_error(self, path: str | Path, hint: str | None = None) -> InputError:
        """`file:line: message (and N more errors)` as the library's exception."""
        more = self.more_text()
        return InputError(
            self.message,
            path=path,
            line=self.line,
            hint=f"and {more}" + (f"; {hint}" if hint else "") if more else hint,
        )


def first_error(findings: Iterable[Finding]) -> FirstError | None:
    """The error with the earliest line (errors without a line come last), or None."""
    errors = [f for f in findings if f.level == "error"]
    if not errors:
        return None
    first = min(errors, key=lambda f: f.lines[0] if f.lines else float("inf"))
    message = first.message + (f": {first.example}" if first.example else "")
    return FirstError(first.lines[0] if first.lines else None, message, count(errors, "error") - 1)
