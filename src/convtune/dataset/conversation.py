"""The model at the centre: every reader produces conversations, every writer consumes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "assistant"]


@dataclass(slots=True)
class Message:
    """One spreadsheet cell: who said it, what, and on which line of the input.

    `rejected` is the worse reply beside an assistant's (the sheet's rejected-replies column,
    read for preference data); None where the row has none, and always for the user's."""

    role: Role
    text: str
    line: int
    rejected: str | None = None


@dataclass(slots=True)
class Conversation:
    """Consecutive rows between two separator rows.

    `index` counts conversations from 0 in input order (empty ones included), so that a split and
    a report can name them; `line` is the first row's line number.
    """

    index: int
    line: int
    messages: list[Message] = field(default_factory=list)

    @property
    def replies(self) -> int:
        return sum(1 for m in self.messages if m.role == "assistant")
