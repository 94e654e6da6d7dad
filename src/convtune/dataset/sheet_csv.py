"""Reading a CSV export row by row, strictly: no row merged, dropped or invented silently.

Python's csv module is forgiving where a spreadsheet reader must not be: a stray quote swallows
every later row into one cell, a lone carriage return splits a row in two, a NUL byte passes as
text. Here it runs in strict mode over lines split at the file's own line ending only, and a
file is judged by the CSV grammar (RFC 4180, with any one-character delimiter), never by guessing
from what a cell holds. These are errors, each naming the line where the quote opened:

- the end of the file inside a quoted cell;
- anything but the delimiter or a line end right after a closing quote;
- a quote inside a cell that does not start with one;
- a CR (LF in an old-Mac file) outside quotes, in the middle of a line;
- a quoted cell that has swallowed lines that are plainly rows of this file: a separator row,
  or the header row again (the error names both lines).

What the grammar allows is read cell for cell, however unusual: a quoted cell that spans lines
and holds the delimiter gets at most a warning. Also: a NUL is an error (with a hint when the file
looks like UTF-16 without a byte-order mark), and a UTF-8/16/32 byte-order mark decides the
encoding (Excel's "Unicode text" is UTF-16LE).

Speed: the lines come from `sheet_lines.LineFeed`, which checks the bytes for NUL and quotes at C
speed; only rows on lines that hold a quote take a closer look here, and only a row whose cell
holds a quote has its raw text read again. Measured on the 16 MB SGD file: about 2% slower than a
bare csv.reader; a file with every cell quoted, 20%; one where every cell holds a quote, about 3x
(each row's raw text is looked at).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, OptionError
from .cell_text import newlines
from .csv_errors import cell_line, csv_error, first_bad_byte, quoted_fields
from .findings import Findings
from .sheet_lines import LineFeed, nul_error

DELIMITERS = (";", ",", "\t", "|")
HEAD = 1 << 16  # bytes read to detect the encoding, the line ending and the delimiter
BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
LONE_CR = re.compile(r"\r(?!\n)")

Row = tuple[int, list[str]]  # (1-based line number where the row starts, cells)

csv.field_size_limit(1 << 30)  # long cells (whole documents) are legitimate messages


@dataclass
class CsvSource:
    """An opened CSV: its rows, how it was read, and how far reading has got (for progress)."""

    rows: Iterator[Row]
    delimiter: str
    encoding: str
    size: int
    position: Callable[[], int]


def open_csv(
    path: Path, encoding: str, delimiter: str | None, findings: Findings, separator: str = "###"
) -> CsvSource:
    """Detect the encoding, line ending and delimiter of `path`, and return its row stream.

    `separator` (the conversation separator) lets a quoted cell that swallowed a separator row
    be named as such.
    """
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise OptionError(
            f"unknown encoding {encoding!r}", hint="try utf-8, cp1252 or latin-1"
        ) from None
    if delimiter is not None:
        delimiter = {"tab": "\t", "\\t": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1 or delimiter in '"\r\n':
            raise OptionError(
                f"the delimiter must be one character other than a quote or a line break,"
                f" not {delimiter!r}"
            )
    raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the row generator
    try:
        head = raw.read(HEAD)
        raw.seek(0)
        name = next((enc for bom, enc in BOMS if head.startswith(bom)), None)
        if name is None:
            name = "utf-8-sig" if codec.name == "utf-8" else codec.name
            if codec.name not in ("utf-8", "utf-8-sig") and _looks_utf8(head):
                findings.warning(
                    "encoding_looks_utf8",
                    f"the file reads as UTF-8 but is decoded as {codec.name}: accented letters"
                    " may come out garbled (try without --encoding)",
                )
        text_head = head.decode(name, errors="replace").lstrip("\ufeff")
        if "\x00" in text_head:
            raise nul_error(path, text_head, text_head.index("\x00"), 0, "\n")
        newline = _line_ending(text_head)
        # Excel reads (and some tools write) a first line `sep=;` that names the delimiter
        hint = re.match(r"sep=([^\r\n])\r?(?:\n|\r|$)", text_head, re.IGNORECASE)
        if delimiter is None and hint:
            delimiter = hint.group(1)
        elif delimiter is None:
            delimiter = detect_delimiter(path, text_head)
    except BaseException:
        raw.close()
        raise
    size = path.stat().st_size
    feed = LineFeed(path, raw, name, newline)

    def position() -> int:
        return size if raw.closed else raw.tell()

    plain = PlainRows(delimiter, separator, header_after=2 if hint else 1)
    rows: Iterator[Row] = _rows(path, raw, feed, plain, name, findings)
    if hint:
        rows = itertools.islice(rows, 1, None)  # the `sep=` line is not the header
    return CsvSource(rows, delimiter, name, size, position)


def _looks_utf8(head: bytes) -> bool:
    """True when `head` has non-ASCII bytes that decode as UTF-8 (a cut last character allowed)."""
    if head.isascii():
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _line_ending(head: str) -> str:
    """'\\r' for an old-Mac file (CR alone ends its first line), else '\\n' (LF or CRLF)."""
    for i, ch in enumerate(head):
        if ch == "\n":
            return "\n"
        if ch == "\r":
            return "\n" if head[i + 1 : i + 2] in ("\n", "") else "\r"
    return "\n"


def detect_delimiter(path: Path, head: str) -> str:
    """The delimiter of the header row: the candidate that splits it into exactly two names.

    Quotes are respected (a header `"Customer, VIP";Agent` is `;`), and only CR and LF end a
    line (not U+2028 as for str.splitlines). When several candidates give two names (a header
    `Customer, Inc<tab>Agent; 2nd line` splits in two at `,`, `;` and tab), the rows below decide:
    the one that gives the most of them as many cells as the header wins, then the one that
    occurs most often in the first line (ties: `;`, `,`, tab, `|`). When none gives two names,
    the most frequent wins and the header check reports what is wrong.
    """
    lines = [line for line in io.StringIO(head, newline="") if line.strip()]
    if not lines:
        raise InputError(
            "no exchanges: the file is empty (row 1 must name the two actors, such as 'Human;AI')",
            path=path,
        )
    first = lines[0]
    counts = {d: first.count(d) for d in DELIMITERS}
    sample = "".join(lines[:50])
    fits: dict[str, int] = {}
    for d in DELIMITERS:
        try:
            rows = list(csv.reader(io.StringIO(sample, newline=""), delimiter=d))
        except csv.Error:
            continue
        if rows and sum(1 for c in rows[0] if c.strip()) == 2:
            fits[d] = sum(1 for r in rows[1:] if len(r) == len(rows[0]))
    if fits:
        return max(fits, key=lambda d: (fits[d], counts[d], -DELIMITERS.index(d)))
    best = max(DELIMITERS, key=lambda d: (counts[d], -DELIMITERS.index(d)))
    if counts[best] == 0:
        raise InputError(
            "the header row has one column; expected two actor names such as 'Human;AI'",
            path=path,
            line=1,
            hint="if the file uses another delimiter, give it with --delimiter",
        )
    return best


@dataclass
class PlainRows:
    """What a line that is plainly a row of this file looks like: a separator row, or the header.

    A quoted cell whose inner lines are such rows swallowed them (a stray or missing quote): the
    grammar allows it, the file's own layout does not. The header is learnt from the first row
    with text at or after line `header_after` (after Excel's `sep=` line, when there is one).
    """

    delimiter: str
    separator: str
    header_after: int = 1
    header: tuple[str, ...] | None = None

    def learn(self, line: int, cells: list[str]) -> None:
        if line >= self.header_after and any(c.strip() for c in cells):
            self.header = _filled(cells)

    def kind(self, text: str) -> str | None:
        """'a separator row' or 'the header row' when one line of raw text is one, else None."""
        if self.delimiter not in text and self.separator not in text:
            return None
        try:
            cells = next(csv.reader([text], delimiter=self.delimiter, strict=True))
        except (csv.Error, StopIteration):
            return None
        filled = _filled(cells)
        if filled and all(c == self.separator for c in filled):
            return "a separator row"
        if filled and filled == self.header and len(filled) >= 2:
            return "the header row"
        return None


def _filled(cells: list[str]) -> tuple[str, ...]:
    """The cells stripped, without trailing empty ones (and without a BOM in the first)."""
    out = [c.strip() for c in cells]
    if out:
        out[0] = out[0].lstrip("\ufeff").strip()
    while out and not out[-1]:
        out.pop()
    return tuple(out)


def _rows(
    path: Path,
    raw: io.RawIOBase,
    feed: LineFeed,
    plain: PlainRows,
    encoding: str,
    findings: Findings,
) -> Iterator[Row]:
    """The rows, with the line each starts on; strict parsing, suspicious rows checked."""
    delimiter = plain.delimiter
    reader = csv.reader(feed, delimiter=delimiter, strict=True)
    feed.reader = reader  # its line count numbers the lines of each chunk the feed reads
    start = 1
    try:
        while True:
            try:
                for cells in reader:
                    line = start
                    end = reader.line_num
                    start = end + 1
                    if plain.header is None:
                        plain.learn(line, cells)
                    if end >= feed.next_flag:  # a quote on its lines: look closer
                        if end == line and len(cells) == 2:  # the common row, inline
                            one, two = cells
                            look = '"' in one or '"' in two or "\r" in one or "\r" in two
                        else:
                            look = end != line or _marked(cells)
                        if look:
                            _check_flagged_row(feed, cells, line, end, plain, findings)
                        if end >= feed.flag_end:
                            feed.passed(end)
                    yield line, cells
                break
            except csv.Error as exc:
                csv_error(path, feed, reader.line_num, start, delimiter, str(exc), findings)
                start = reader.line_num + 1
                feed.passed(reader.line_num)
    except UnicodeDecodeError as exc:
        offset, line = first_bad_byte(path, encoding)
        raise InputError(
            f"not valid {encoding.replace('-sig', '').upper()} at byte {offset}"
            f" ({exc.reason}, byte 0x{exc.object[exc.start]:02x})",
            path=path,
            line=line,
            hint="give the file's encoding, e.g. --encoding cp1252, or save it as UTF-8",
        ) from None
    finally:
        feed.close()
        raw.close()


def _marked(cells: list[str]) -> bool:
    """True when a cell holds a quote or a CR."""
    return any('"' in c or "\r" in c for c in cells)


def _check_flagged_row(
    feed: LineFeed, cells: list[str], line: int, end: int, plain: PlainRows, findings: Findings
) -> None:
    """Checks for a row on lines that hold a quote; normalises the line breaks in its cells.

    What strict parsing lets through and the grammar forbids: a quote inside a cell that does
    not start with one (Excel would show it as text, but no spreadsheet writes it: a stray quote,
    or a quoted cell that lost its opening quote, which can turn `###` into a message or the lines
    of a multi-line cell into rows). What the grammar allows but the file's layout does not: a
    quoted cell whose inner lines are a separator row or the header row again (a stray quote ran
    on over them). What is valid and merely unusual gets a warning: a lone CR inside a quoted cell
    of an LF or CRLF file (read as a line break, as Excel shows it), and a quoted multi-line cell
    with the delimiter on a later line (fine for a message written that way, but also what a
    stray quote makes). The row's raw text is read only when a finding needs its line.
    """
    raw: str | None = None  # the row's raw text and its fields, read only when needed
    fields: list[tuple[bool, int]] = []
    parsed = cells[:]  # as csv read them: the raw text is these, quoted or not
    delimiter = plain.delimiter

    def opened(i: int) -> int:
        nonlocal raw, fields
        if raw is None:
            raw = feed.raw(line, end)
            fields = quoted_fields(raw, parsed)
        return cell_line(raw, fields, i, line, feed.newline)

    for i, cell in enumerate(cells):
        if "\r" in cell:
            lone = LONE_CR.search(cell) if feed.newline == "\n" else None
            if lone:
                findings.warning(
                    "cr_in_cell",
                    "a carriage return (CR) alone inside a quoted cell, in a file whose lines end"
                    " with LF or CRLF: read as a line break, as Excel shows it",
                    opened(i) + cell.count("\n", 0, lone.start()),
                )
            cell = cells[i] = newlines(cell)
        if '"' in cell and "\n" not in cell:  # was it quoted? the raw text tells
            at = opened(i)
            if i < len(fields) and not fields[i][0]:
                findings.error(
                    "quote_in_unquoted_cell",
                    "a quote inside a cell that does not start with one: spreadsheets write such"
                    ' a cell quoted, with the quote doubled ("12"" screen"). A stray quote?'
                    " remove it; a quoted cell that lost its opening quote? put it back (with no"
                    " space before it)",
                    at,
                    detail=repr(cell.strip()[:60]),
                )
                continue
        if "\n" not in cell:  # only a quoted cell holds a line break
            continue
        # the cell's inner lines are whole lines of the file (its quote opened before them)
        inner = [t.rstrip("\r") for t in parsed[i].split(feed.newline)[1:-1]]
        swallowed = None  # a separator cell written on several lines ("\n###\n") is one
        if cell.strip() != plain.separator:
            swallowed = next(
                ((k, kind) for k, text in enumerate(inner, 1) if (kind := plain.kind(text))), None
            )
        if swallowed is not None:
            first = opened(i)
            k, kind = swallowed
            findings.error(
                "quote_swallows_rows",
                "a quoted cell runs over lines that are rows of this file: a stray or missing"
                " quote has merged rows into one cell (check the quotes from the line where it"
                " opens)",
                first,
                detail=f"the quote opens on line {first}; line {first + k} is {kind}:"
                f" {inner[k - 1][:60]!r}",
            )
        elif delimiter in cell[cell.index("\n") :]:
            first = opened(i)
            findings.warning(
                "multiline_cell_with_delimiter",
                "a quoted cell spans several lines and a later line holds the delimiter: fine"
                " for a message written that way, but check for a stray quote that merged rows",
                first,
                detail=f"lines {first}-{first + len(inner) + 1}",
            )
