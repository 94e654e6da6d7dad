"""What went wrong in a CSV, said as a person would look for it: the line a broken quote opens on,
the cell it swallowed, the first byte that is not of the encoding.

The reader (`sheet_csv`) judges a file by RFC 4180's grammar; when the grammar fails, these turn
Python's csv module's terse error (or a decoding error) into a one-line `InputError` that names
the file, the line and what to do.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from .findings import Findings
from .sheet_lines import LineFeed


def cell_line(
    raw: str | None, fields: list[tuple[bool, int]], i: int, line: int, newline: str
) -> int:
    """The line where cell `i` of a row starting on `line` starts (its quote opens)."""
    if raw is None or i >= len(fields):
        return line
    return line + raw.count(newline, 0, fields[i][1])


def quoted_fields(raw: str, cells: list[str]) -> list[tuple[bool, int]]:
    """(was it quoted, offset where it starts) for each cell of one record's raw text.

    The record parsed without error, so its raw text is each cell as is, or quoted: a quote,
    the cell with its quotes doubled, a quote; then a delimiter.
    """
    out: list[tuple[bool, int]] = []
    at = 0
    for cell in cells:
        quoted = raw.startswith('"', at)
        out.append((quoted, at))
        at += len(cell) + 1 + (2 + cell.count('"') if quoted else 0)
    return out


def quote_problem(raw: str, delimiter: str) -> tuple[str, int, int] | None:
    """('open' | 'after', offset of the opening quote, offset of the problem) for the first
    quoted field of `raw` that never closes or has text after its closing quote."""
    i, n = 0, len(raw)
    while i <= n:
        if i < n and raw[i] == '"':
            j = i + 1
            while True:
                k = raw.find('"', j)
                if k < 0:
                    return "open", i, n
                if raw[k + 1 : k + 2] == '"':
                    j = k + 2
                    continue
                break
            after = raw[k + 1 : k + 2]
            if after not in (delimiter, "\r", "\n", ""):
                return "after", i, k + 1
            if after != delimiter:
                # the record ends here; the next line starts a new one
                i = k + 1 + (2 if raw[k + 1 : k + 3] == "\r\n" else 1)
                continue
            i = k + 2
            continue
        stops = [at for at in (raw.find(m, i) for m in (delimiter, "\r", "\n")) if at >= 0]
        if not stops:
            return None
        stop = min(stops)
        i = stop + (2 if raw[stop : stop + 2] == "\r\n" else 1)
    return None


def csv_error(
    path: Path,
    feed: LineFeed,
    line: int,
    start: int,
    delimiter: str,
    message: str,
    findings: Findings,
) -> None:
    """Turn one of csv's strict-mode errors into a finding that names the line and the fix."""
    if "new-line character seen in unquoted field" in message:
        what = "carriage return (CR)" if feed.newline == "\n" else "line feed (LF)"
        findings.error(
            "line_break_in_row",
            f"a {what} in the middle of a line, outside quotes: it would split the row in two"
            " (remove it, or quote the cell if it is a line break inside a message)",
            line,
        )
        return
    if "unexpected end of data" in message:
        text = feed.text_from(start, 1 << 20)
        found = quote_problem(text, delimiter)
        opened = start + text.count(feed.newline, 0, found[1]) if found else start
        findings.error(
            "unclosed_quote",
            "a quote opens a cell here and never closes: every later row would become part of"
            ' that cell (close the quote, or write a quote inside a quoted cell as "")',
            opened,
            detail=f"the quoted cell runs to the end of the file, line {line}",
        )
        return
    if "expected after" in message:
        raw = feed.raw(start, line)
        found = quote_problem(raw, delimiter)
        opened = start + raw.count(feed.newline, 0, found[1]) if found else start
        if opened < line:
            findings.error(
                "quote_merges_rows",
                "a quoted cell spans several lines and has text after its closing quote: a"
                " stray or missing quote has merged rows into one cell (check the quotes"
                " from this line on)",
                opened,
                detail=f"lines {opened}-{line}",
            )
        else:
            findings.error(
                "text_after_quote",
                "text after the closing quote of a quoted cell: write a quote inside a quoted"
                ' cell as "" ("say ""hi"""), and start a cell with a quote only to quote all'
                " of it",
                line,
            )
        return
    findings.error("bad_csv", f"cannot parse CSV: {message}", line)


def first_bad_byte(path: Path, encoding: str) -> tuple[int, int]:
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
