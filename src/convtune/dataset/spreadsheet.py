"""Reading conversation spreadsheets (CSV or .xlsx) into a stream of conversations.

The layout (see DESIGN.md): a header row naming the two actors, one row per exchange (actor 1's
message, actor 2's reply), and a separator row between conversations. Reading is streaming: only
the current conversation is held in memory.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

from ..errors import InputError, OptionError
from .conversation import Conversation, Message
from .findings import Findings

DELIMITERS = (";", ",", "\t", "|")
DELIMITER_NAMES = {";": "';'", ",": "','", "\t": "tab", "|": "'|'"}
XLSX_SUFFIXES = (".xlsx", ".xlsm")

csv.field_size_limit(1 << 30)  # long cells (whole documents) are legitimate messages


@dataclass(frozen=True)
class SheetOptions:
    """How to read a spreadsheet; every field has the default a user expects."""

    delimiter: str | None = None  # None: detect from the header row
    encoding: str = "utf-8"  # a BOM is accepted and dropped for any UTF-8 input
    sheet: str | None = None  # .xlsx only: None is the first sheet
    separator: str = "###"  # a row whose non-empty cells all equal this ends a conversation


@dataclass
class Sheet:
    """An opened spreadsheet: the two actors, and the conversations to iterate once."""

    path: Path
    actors: tuple[str, str]
    delimiter: str | None
    conversations: Iterator[Conversation]
    size: int  # bytes (CSV) or rows (.xlsx), for progress
    position: Callable[[], int]  # how much of `size` has been read


Row = tuple[int, list[str]]  # (1-based line number where the row starts, cells)


def open_sheet(path: str | Path, options: SheetOptions, findings: Findings) -> Sheet:
    """Open `path`, read its header row and return the conversation stream.

    Problems that make the output wrong (a bad header, the separator inside a message, extra
    columns) are errors; oddities that lose nothing (empty conversations, a reply without a
    message) are warnings. Both go to `findings` with their line numbers.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=path)
    if path.is_dir():
        raise InputError("is a folder, not a spreadsheet", path=path)
    if not options.separator.strip():
        raise OptionError("the separator cannot be empty")
    if path.suffix.lower() in XLSX_SUFFIXES:
        rows, size, position, delimiter = _xlsx_rows(path, options, findings)
    else:
        rows, size, position, delimiter = _csv_rows(path, options)
    actors = _read_header(path, rows)
    conversations = _conversations(path, rows, options.separator, findings)
    return Sheet(path, actors, delimiter, conversations, size, position)


# -- CSV ------------------------------------------------------------------------------------------


def _csv_rows(path: Path, options: SheetOptions) -> tuple[Iterator[Row], int, Callable, str]:
    try:
        codec = codecs.lookup(options.encoding)
    except LookupError:
        raise OptionError(
            f"unknown encoding {options.encoding!r}", hint="try utf-8, cp1252 or latin-1"
        ) from None
    encoding = "utf-8-sig" if codec.name == "utf-8" else codec.name
    raw = open(path, "rb")  # noqa: SIM115 - closed by the row generator
    size = path.stat().st_size
    delimiter = options.delimiter
    if delimiter is not None:
        delimiter = {"tab": "\t", "\\t": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1:
            raw.close()
            raise OptionError(f"the delimiter must be one character, not {options.delimiter!r}")
    else:
        delimiter = _detect_delimiter(path, raw.read(64 * 1024), encoding)
        raw.seek(0)
    text = io.TextIOWrapper(raw, encoding=encoding, newline="")

    def position() -> int:
        return size if raw.closed else raw.tell()

    return _csv_iter(path, raw, text, delimiter, encoding), size, position, delimiter


def _detect_delimiter(path: Path, head: bytes, encoding: str) -> str:
    """The candidate that splits the header row into the most cells (ties: `;`, `,`, tab, `|`)."""
    try:
        header = head.decode(encoding, errors="ignore").lstrip("\ufeff")
    except LookupError:  # pragma: no cover - encoding already validated
        header = head.decode("utf-8", errors="ignore")
    header = header.splitlines()[0] if header else ""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    if counts[best] == 0:
        raise InputError(
            "the header row has one column; expected two actor names such as 'Human;AI'",
            path=path,
            line=1,
            hint="if the file uses another delimiter, give it with --delimiter",
        )
    return best


def _csv_iter(path: Path, raw, text, delimiter: str, encoding: str) -> Iterator[Row]:
    reader = csv.reader(text, delimiter=delimiter, strict=False)
    start = 1
    try:
        for cells in reader:
            line = start
            start = reader.line_num + 1
            yield line, cells
    except UnicodeDecodeError as exc:
        offset, line = _first_bad_byte(path, encoding)
        raise InputError(
            f"not valid {encoding.replace('-sig', '').upper()} at byte {offset}"
            f" ({exc.reason}, byte 0x{exc.object[exc.start]:02x})",
            path=path,
            line=line,
            hint="give the file's encoding, e.g. --encoding cp1252, or save it as UTF-8",
        ) from None
    except csv.Error as exc:
        raise InputError(f"cannot parse CSV: {exc}", path=path, line=start) from None
    finally:
        text.close()
        raw.close()


def _first_bad_byte(path: Path, encoding: str) -> tuple[int, int]:
    """Byte offset (0-based) and line (1-based) of the first byte that does not decode."""
    if encoding == "utf-8-sig":
        encoding = "utf-8"  # the BOM itself is valid UTF-8; offsets stay those of the file
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    lines = 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                return bad, lines + chunk[: max(bad - offset, 0)].count(b"\n")
            lines += chunk.count(b"\n")
            offset += len(chunk)
    return offset, lines


# -- XLSX -----------------------------------------------------------------------------------------


def _xlsx_rows(
    path: Path, options: SheetOptions, findings: Findings
) -> tuple[Iterator[Row], int, Callable, None]:
    try:
        import openpyxl
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("reading .xlsx needs openpyxl", path=path) from exc
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged file
        raise InputError(f"cannot open as an Excel workbook: {exc}", path=path) from None
    names = book.sheetnames
    if options.sheet is not None:
        if options.sheet not in names:
            book.close()
            raise InputError(
                f"no sheet named {options.sheet!r}",
                path=path,
                hint="sheets: " + ", ".join(repr(n) for n in names),
            )
        sheet = book[options.sheet]
    else:
        sheet = book[names[0]]
        if len(names) > 1:
            findings.warning(
                "several_sheets",
                f"the workbook has {len(names)} sheets; read the first, {names[0]!r}"
                " (choose another with --sheet)",
                detail=", ".join(names),
            )
    size = sheet.max_row or 0
    state = {"row": 0}

    def rows() -> Iterator[Row]:
        try:
            for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
                state["row"] = number
                yield number, [_cell_text(v) for v in values]
        finally:
            book.close()

    return rows(), size, lambda: state["row"], None


def _cell_text(value: object) -> str:
    """A cell as the text a person sees in Excel (42, not 42.0; dates in ISO form)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


# -- Layout ---------------------------------------------------------------------------------------


def _read_header(path: Path, rows: Iterator[Row]) -> tuple[str, str]:
    for line, cells in rows:
        names = [c.strip() for c in cells]
        if not any(names):
            continue
        filled = [n for n in names if n]
        if len(filled) > 2 or any(names[2:]):
            raise InputError(
                f"the header row has {len(filled)} non-empty columns; expected exactly two"
                f" actor names (got {', '.join(repr(n) for n in filled)})",
                path=path,
                line=line,
                hint="the wrong delimiter? give it with --delimiter",
            )
        if len(names) < 2 or not names[0] or not names[1]:
            raise InputError(
                "the header row must name two actors in its first two columns, such as 'Human;AI'",
                path=path,
                line=line,
            )
        if names[0] == names[1]:
            raise InputError(
                f"both actors are named {names[0]!r}; they must differ", path=path, line=line
            )
        return names[0], names[1]
    raise InputError("the file is empty; expected a header row such as 'Human;AI'", path=path)


def _conversations(
    path: Path, rows: Iterator[Row], separator: str, findings: Findings
) -> Iterator[Conversation]:
    """Group rows into conversations; see the module docstring for the rules."""
    index = 0
    current: Conversation | None = None
    for line, cells in rows:
        # Fast path for the common two-column row; strip and drop trailing empty cells.
        n = len(cells)
        if n == 2:
            first = cells[0].strip()
            second = cells[1].strip()
        elif n == 0:
            continue
        else:
            first = cells[0].strip()
            second = cells[1].strip() if n > 1 else ""
            extra = [c for c in cells[2:] if c.strip()]
            if extra:
                findings.error(
                    "extra_columns",
                    "a row has more than two non-empty cells; only the two actors' columns"
                    " are read",
                    line,
                    detail=f"extra: {extra[0][:60]!r}",
                )
                continue
        if not first and not second:
            continue
        if (first == separator or second == separator) and (
            (first == separator or not first) and (second == separator or not second)
        ):
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
            continue
        if separator in first or separator in second:
            findings.error(
                "separator_in_message",
                f"the separator {separator!r} appears inside a message; the seed forbids it",
                line,
                detail=(first if separator in first else second)[:80],
            )
            continue
        if current is None:
            current = Conversation(index, line)
        messages = current.messages
        if first:
            messages.append(Message("user", first, line))
        elif second:
            findings.warning(
                "reply_without_message",
                "a reply with no message before it in its row (actor 2 speaks again)",
                line,
            )
        if second:
            messages.append(Message("assistant", second, line))
    if current is not None and current.messages:
        _finish(current, findings)
        yield current


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
