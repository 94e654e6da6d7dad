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
from .sheet_header import Row, read_header

__all__ = ["DELIMITERS", "XLSX_SUFFIXES", "Sheet", "SheetOptions", "open_sheet"]

XLSX_SUFFIXES = (".xlsx", ".xlsm", ".xltx", ".xltm")

OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Excel 97-2003 .xls, and other old Office files
ZIP = b"PK\x03\x04"


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
    header = read_header(
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
