"""The header row of a conversation spreadsheet: the two actors it names, and for preference
data the column of rejected replies.

A header is the one row that says how to read every other, so it is checked hard: a separator row
first, an empty or duplicated actor name, a name that reads like a sentence (a file with no
header, whose first exchange would be taken for names), a rejected column that is not there. Each
is an error with its line (`InputError`), before any conversation is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .sheet_csv import Row

NAME_LIMIT = 40  # a longer "actor name" is probably the first exchange of a file with no header


@dataclass(frozen=True)
class Header:
    """The header row: the two actors, its cells, and where the rejected replies are."""

    actors: tuple[str, str]
    names: list[str]  # every cell, stripped
    width: int  # cells, trailing empty ones included
    line: int
    rejected_index: int | None = None  # the rejected replies' column (0-based), if read


def read_header(
    path: Path,
    rows: Iterator[Row],
    separator: str,
    *,
    rejected: bool = False,
    rejected_column: str | None = None,
) -> Header:
    """The two actor names from the first non-blank row (blank rows before it are skipped), how
    many cells that row has (trailing empty ones included), and with `rejected` the column of
    rejected replies."""
    for line, cells in rows:
        names = [c.strip() for c in cells]
        if not any(names):
            continue
        names[0] = names[0].lstrip("\ufeff").strip()  # a second BOM (files joined together)
        filled = [n for n in names if n]
        if filled and all(n == separator for n in filled):
            raise InputError(
                f"the first row is a separator row ({separator!r}); it must name the two"
                " actors, such as 'Human;AI'",
                path=path,
                line=line,
            )
        if len(filled) == 2 and (not names[0] or len(names) < 2 or not names[1]):
            columns = [_column(i) for i, n in enumerate(names) if n]
            raise InputError(
                f"the actor names must be in the first two columns, not in columns"
                f" {columns[0]} and {columns[1]}",
                path=path,
                line=line,
                hint="move the table so that it starts in column A",
            )
        rejected_index = None
        if rejected:
            rejected_index = _rejected_index(path, line, names, rejected_column)
            if rejected_index is not None:
                if len(filled) > 3 or any(
                    n for i, n in enumerate(names[2:], start=2) if i != rejected_index
                ):
                    raise InputError(
                        f"the header row has {len(filled)} non-empty columns; expected the two"
                        " actors and the rejected replies' column"
                        f" (got {', '.join(repr(n) for n in filled)})",
                        path=path,
                        line=line,
                        hint="delete the other columns; the wrong delimiter? give it with"
                        " --delimiter",
                    )
                if names[rejected_index] in names[:2]:
                    raise InputError(
                        f"the rejected replies' column is named {names[rejected_index]!r}, as"
                        " an actor is; it must differ",
                        path=path,
                        line=line,
                    )
                if _sentence(names[rejected_index]):
                    raise InputError(
                        "the first row must name the two actors and the rejected replies'"
                        " column, but looks like an exchange",
                        path=path,
                        line=line,
                        hint="add a header row such as 'Human;AI;Rejected' above the first"
                        " exchange",
                    )
                filled = [n for n in names[:2] if n]
        if rejected_index is None and (len(filled) > 2 or any(names[2:])):
            third = " (a column of rejected replies? --format preference reads it)"
            raise InputError(
                f"the header row has {len(filled)} non-empty columns; expected exactly two"
                f" actor names (got {', '.join(repr(n) for n in filled)})",
                path=path,
                line=line,
                hint="the wrong delimiter? give it with --delimiter"
                + (third if len(filled) == 3 and not rejected else "")
                + (
                    "; the rejected replies go in the third column, or in the one named with"
                    " --rejected-column"
                    if rejected
                    else ""
                ),
            )
        if len(filled) == 1 or len(names) < 2 or not names[0] or not names[1]:
            raise InputError(
                f"the header row names one actor ({filled[0]!r}); it must name two in its"
                " first two columns, such as 'Human;AI'",
                path=path,
                line=line,
                hint="actor 1 (the user) in the first column, actor 2 (the assistant) in the"
                " second",
            )
        if names[0] == names[1]:
            raise InputError(
                f"both actors are named {names[0]!r}; they must differ", path=path, line=line
            )
        for name in names[:2]:
            if "\n" in name or "\r" in name or separator in name:
                raise InputError(
                    f"the header row must name the two actors, but holds {name[:60]!r}: is"
                    " the first row an exchange?",
                    path=path,
                    line=line,
                    hint="add a header row such as 'Human;AI' above the first exchange",
                )
        if any(_sentence(n) for n in names[:2]):
            raise InputError(
                "the first row must name the two actors, but looks like an exchange",
                path=path,
                line=line,
                hint="add a header row such as 'Human;AI' above the first exchange",
            )
        return Header((names[0], names[1]), names, len(cells), line, rejected_index)
    raise InputError(
        "no exchanges: the file is empty (row 1 must name the two actors, such as 'Human;AI')",
        path=path,
    )


def _rejected_index(
    path: Path, line: int, names: list[str], rejected_column: str | None
) -> int | None:
    """The column of rejected replies: the one named `rejected_column` (its exact name, else
    the one name that matches ignoring case), or the third one; None when the header has no
    third name and none was named."""
    if rejected_column is None:
        return 2 if len(names) > 2 and names[2] else None
    wanted = rejected_column.strip()
    matches = [i for i, n in enumerate(names) if n == wanted] or [
        i for i, n in enumerate(names) if n and n.casefold() == wanted.casefold()
    ]
    if len(matches) != 1:
        how = "two columns are" if matches else "no column is"
        raise InputError(
            f"{how} named {wanted!r} in the header row"
            f" (it names {', '.join(repr(n) for n in names if n)})",
            path=path,
            line=line,
            hint="give --rejected-column the name of the column of rejected replies",
        )
    if matches[0] < 2:
        raise InputError(
            f"--rejected-column names {wanted!r}, an actor's column: the rejected replies need a"
            " column of their own, after the two actors'",
            path=path,
            line=line,
        )
    return matches[0]


def _column(index: int) -> str:
    """0 -> 'A', 27 -> 'AB': a column as a spreadsheet names it."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(65 + rest) + name
    return name


def _sentence(name: str) -> bool:
    """True for text that is not an actor's name: a question, an exclamation, a long sentence."""
    return len(name) > NAME_LIMIT or name[-1] in "?!" or len(name.split()) >= 6
