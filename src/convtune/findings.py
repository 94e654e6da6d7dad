"""Findings: problems found in an input, counted by kind, with the first line numbers of each.

Checks never print or stop: they add findings here, and the front end decides what to show and
which exit code follows. A tally keeps a count and the first few line numbers of each kind, so
memory stays bounded however many times a problem repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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

    def to_list(self) -> list[dict]:
        return [f.to_dict() for f in self.by_code.values()]
