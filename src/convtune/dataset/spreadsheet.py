"""Reading conversation spreadsheets (CSV or .xlsx) into a stream of conversations.

The layout (see DESIGN.md): a header row naming the two actors, one row per exchange (actor 1's
message, actor 2's reply), and a separator row between conversations. Preference data adds one
column, the rejected replies (`Human;AI;Rejected`): read only when asked for (`rejected=True`),
since in any other sheet a third column is a mistake worth an error. Reading is streaming: only
the current conversation is held in memory.

The rule this module keeps: a row is never merged, dropped or invented silently. What cannot be
read as the user sees it in Excel is an error with its line (the run stops, nothing is written);
what loses nothing but may surprise is a warning with its line. The file formats live in
`sheet_csv` and `sheet_xlsx`; this module sniffs which one a file is and applies the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, OptionError
from .conversation import Conversation, Message
from .findings import Findings
from .sheet_csv import DELIMITERS, open_csv

__all__ = ["DELIMITERS", "XLSX_SUFFIXES", "Sheet", "SheetOptions", "open_sheet"]

XLSX_SUFFIXES = (".xlsx", ".xlsm", ".xltx", ".xltm")

DELIMITER_NAMES = {";": "';'", ",": "','", "\t": "tab", "|": "'|'"}
OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Excel 97-2003 .xls, and other old Office files
ZIP = b"PK\x03\x04"
NAME_LIMIT = 40  # a longer "actor name" is probably the first exchange of a file with no header


@dataclass(frozen=True)
class SheetOptions:
    """How to read a spreadsheet; every field has the default a user expects."""

    delimiter: str | None = None  # None: detect from the header row
    encoding: str = "utf-8"  # a byte-order mark (UTF-8, UTF-16, UTF-32) overrides it
    sheet: str | None = None  # .xlsx only: None is the first visible sheet
    separator: str = "###"  # a row whose non-empty cells all equal this ends a conversation
    rejected_column: str | None = None  # the rejected replies' column (None: the third one)


@dataclass
class Sheet:
    """An opened spreadsheet: the two actors, and the conversations to iterate once."""

    path: Path
    actors: tuple[str, str]
    delimiter: str | None
    conversations: Iterator[Conversation]
    size: int  # bytes (CSV) or rows (.xlsx), for progress
    position: Callable[[], int]  # how much of `size` has been read
    rejected: str | None = None  # the rejected replies' column, as the header names it
    header_line: int = 1


Row = tuple[int, list[str]]  # (1-based line number where the row starts, cells)


def open_sheet(
    path: str | Path, options: SheetOptions, findings: Findings, *, rejected: bool = False
) -> Sheet:
    """Open `path`, read its header row and return the conversation stream.

    `rejected` (or a `rejected_column` in `options`): the sheet may have a column of rejected
    replies, the one named `rejected_column` or else the header's third; each reply's is its
    message's `rejected`. A header with no such column gives `Sheet.rejected` None (the caller
    decides whether rows without rejected replies will do).

    Problems that make the output wrong (a bad header, the separator inside a message, extra
    columns, a broken quote...) are errors; oddities that lose nothing (empty conversations, a
    reply without a message) are warnings. Both go to `findings` with their line numbers. A file
    with no exchange at all is an error (`no exchanges: ...`) once the stream is read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=path)
    if path.is_dir():
        raise InputError("is a folder, not a spreadsheet", path=path)
    if not options.separator.strip():
        raise OptionError("the separator cannot be empty")
    separator = options.separator.strip()
    rejected = rejected or options.rejected_column is not None
    if _is_workbook(path):
        from .sheet_xlsx import open_xlsx  # zipfile and xml only for workbooks: 2 MB a process

        # with rejected replies, formulas and merges are checked in every column: which one
        # holds them is known only once the header row is read
        columns = None if rejected else 2
        source = open_xlsx(path, options.sheet, findings, columns=columns)
        rows, size, position, delimiter = source.rows, source.size, source.position, None
    else:
        csv_source = open_csv(path, options.encoding, options.delimiter, findings, separator)
        rows, size, position = csv_source.rows, csv_source.size, csv_source.position
        delimiter = csv_source.delimiter
    header = _read_header(
        path, rows, separator, rejected=rejected, rejected_column=options.rejected_column
    )
    width = header.width if delimiter is not None else None  # .xlsx rows end at their last
    # stored cell: no width to compare
    conversations = _conversations(
        path, rows, header.actors, separator, width, findings, header.rejected_index
    )
    name = header.names[header.rejected_index] if header.rejected_index is not None else None
    return Sheet(path, header.actors, delimiter, conversations, size, position, name, header.line)


def _is_workbook(path: Path) -> bool:
    """True for an .xlsx workbook (whatever its name); an error for formats we cannot read."""
    with open(path, "rb") as f:
        magic = f.read(8)
    suffix = path.suffix.lower()
    if magic.startswith(OLE2):
        raise InputError(
            "an Excel 97-2003 workbook (.xls) or another old Office file: convtune reads .xlsx"
            " and CSV",
            path=path,
            hint="in Excel: File > Save As > Excel Workbook (.xlsx) or CSV UTF-8",
        )
    if magic.startswith(ZIP):
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except zipfile.BadZipFile:
            names = set()
        if any(n.endswith("workbook.xml") for n in names):
            return True
        what = "an OpenDocument file (.ods)" if "content.xml" in names else "a ZIP archive"
        raise InputError(
            f"{what}, not a spreadsheet convtune reads",
            path=path,
            hint="save it as .xlsx or CSV UTF-8",
        )
    if suffix in XLSX_SUFFIXES:
        raise InputError(
            "not an Excel workbook: the file is not a ZIP archive as .xlsx files are",
            path=path,
            hint="a CSV named .xlsx? rename it to .csv",
        )
    if suffix in (".xls", ".ods", ".numbers"):
        raise InputError(
            f"convtune reads .xlsx and CSV, not {suffix}",
            path=path,
            hint="save it as .xlsx or CSV UTF-8",
        )
    return False


# -- Layout ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The header row: the two actors, its cells, and where the rejected replies are."""

    actors: tuple[str, str]
    names: list[str]  # every cell, stripped
    width: int  # cells, trailing empty ones included
    line: int
    rejected_index: int | None = None  # the rejected replies' column (0-based), if read


def _read_header(
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


def _conversations(
    path: Path,
    rows: Iterator[Row],
    actors: tuple[str, str],
    separator: str,
    width: int | None,
    findings: Findings,
    rejected_index: int | None = None,
) -> Iterator[Conversation]:
    """Group rows into conversations; see the module docstring for the rules.

    `rejected_index`: the column of rejected replies, if read. Its cell is one more cell of
    the row for the separator and blank-row rules; filled, it needs a reply beside it.

    `width`: a CSV header row's number of cells. Spreadsheet programs write every row with as
    many cells; a longer row with a reply (`a;b;` under `Human;AI`) may be two rows joined by a
    lost line break (`a;` + `b;`: a message turned into a reply), so it is an error. (Other joins
    leave a third non-empty cell, an error too, or change nothing: `a;` + `;` is `a;;`.)
    """
    index = 0
    current: Conversation | None = None
    separators = 0  # separator rows, messages seen, a reply seen: to say why nothing came out
    spoke = replied = False
    blank: int | None = None  # the first blank row inside the current conversation
    actor1, actor2 = actors
    for line, cells in rows:
        # Fast path for the common two-column row; strip and drop trailing empty cells.
        n = len(cells)
        third = ""  # the rejected reply
        if n == 2:
            first = cells[0].strip()
            second = cells[1].strip()
        elif n == 0:
            if current is not None and blank is None:
                blank = line
            continue
        else:
            first = cells[0].strip()
            second = cells[1].strip() if n > 1 else ""
            rest = cells[2:]
            if rejected_index is not None and n > rejected_index:
                third = cells[rejected_index].strip()
                rest = cells[2:rejected_index] + cells[rejected_index + 1 :]
            extra = [c.strip() for c in rest if c.strip()]
            if extra and not (
                all(c == separator for c in extra)
                and first in (separator, "")
                and second in (separator, "")
                and third in (separator, "")
            ):
                findings.error(
                    "extra_columns",
                    (
                        "a row has a non-empty cell outside the actors' and the rejected"
                        " replies' columns (move or delete it)"
                        if rejected_index is not None
                        else "a row has more than two non-empty cells; only the two actors'"
                        " columns are read (move or delete the text beyond the second column;"
                        " rejected replies? name their column in the header row and give"
                        " --format preference)"
                    ),
                    line,
                    detail=f"extra: {extra[0][:60]!r}",
                )
                continue
            if extra:
                first = first or separator  # a separator row spread over more columns
            elif width is not None and n > width and second:
                findings.error(
                    "row_wider_than_header",
                    "a row has more cells than the header row: two rows joined by a lost line"
                    " break? (a message would read as a reply: put the line break back, or"
                    " remove the extra delimiters so that every row has as many as the header)",
                    line,
                    detail=f"{n} cells, the header has {width}",
                )
                continue
            if n == 1 and first and width is not None and first != separator:
                findings.error(
                    "missing_delimiter",
                    "a row with no delimiter: every row needs its two cells (write 'message;'"
                    " for a message with no reply; if this line continues the cell above, that"
                    " cell needs quotes)",
                    line,
                    detail=repr(first[:60]),
                )
                continue
        if not first and not second and not third:
            if current is not None and blank is None:
                blank = line
            continue
        if first == separator or second == separator or third == separator:
            if (
                (first == separator or not first)
                and (second == separator or not second)
                and (third == separator or not third)
            ):
                separators += 1
                if current is None or not current.messages:
                    findings.warning(
                        "empty_conversation",
                        "separator row with no conversation before it",
                        line,
                    )
                    index += 1
                else:
                    _finish(current, findings)
                    yield current
                    index += 1
                current = None
                blank = None
                continue
            findings.error(
                "separator_beside_text",
                f"a separator row ({separator!r}) with text beside it: a row that ends a"
                " conversation must hold nothing but the separator (move the text to its own"
                " row)",
                line,
                detail=next(c for c in (first, second, third) if c and c != separator)[:80],
            )
            continue
        if separator in first or separator in second or separator in third:
            findings.error(
                "separator_in_message",
                f"the separator {separator!r} appears inside a message; the seed forbids it",
                line,
                detail=next(c for c in (first, second, third) if separator in c)[:80],
            )
            continue
        if third and not second:
            findings.error(
                "rejected_without_reply",
                f"a rejected reply with no reply beside it in the {actor2!r} column: a rejected"
                " reply is the worse answer to its row's message, beside the better one",
                line,
                detail=third[:60],
            )
            continue
        if second == actor2 and first.lstrip("\ufeff").strip() == actor1:
            findings.error(
                "repeated_header",
                "the header row appears again (files joined together?): delete this row, or it"
                " would be read as an exchange",
                line,
            )
            continue
        if current is None:
            current = Conversation(index, line)
        elif blank is not None:
            findings.warning(
                "blank_row",
                "a blank row inside a conversation is skipped: it does not end the"
                f" conversation (a {separator!r} row does)",
                blank,
            )
        blank = None
        messages = current.messages
        if first:
            spoke = True
            messages.append(Message("user", first, line))
        elif second:
            findings.warning(
                "reply_without_message",
                "a reply with no message before it in its row (actor 2 speaks again)",
                line,
            )
        if second:
            replied = True
            messages.append(Message("assistant", second, line, third or None))
    if current is not None and current.messages:
        _finish(current, findings)
        yield current
    if not replied and not findings.errors:  # with errors, those say what is wrong
        findings.error("no_exchanges", _why_empty(spoke, separators, actors))


def _why_empty(spoke: bool, separators: int, actors: tuple[str, str]) -> str:
    """The `no exchanges: ...` message for a file whose rows gave no reply."""
    if not spoke and not separators:
        why = "nothing after the header row"
    elif not spoke:
        why = "only separator rows after the header row"
    else:
        why = (
            f"no row has a reply in the {actors[1]!r} column (the second column holds actor 2's"
            " replies; each non-empty reply cell gives one example)"
        )
    return f"no exchanges: {why}"


def _finish(conversation: Conversation, findings: Findings) -> None:
    messages = conversation.messages
    if messages[-1].role == "assistant":
        return
    if not any(m.role == "assistant" for m in messages):
        findings.warning(
            "no_reply",
            "a conversation with no reply at all gives no example",
            conversation.line,
        )
        return
    findings.warning(
        "unanswered_message",
        "a message at the end of a conversation that no reply follows is in no example",
        messages[-1].line,
    )
