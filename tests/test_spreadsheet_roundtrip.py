"""Property: whatever a real writer makes of random cells, `convtune prepare` reads back exactly.

Cells are drawn from line breaks (LF and CRLF), both quote characters, every delimiter, `###`,
non-Latin text, spaces and empty cells. Each sheet is written as a spreadsheet program would:

- by Python's csv module and by pandas' `to_csv`, with each delimiter (`,` `;` tab), each quoting
  mode (minimal, as Excel and Google Sheets write; all, as LibreOffice's "quote all text cells"
  and QUOTE_NONNUMERIC write), LF or CRLF, with or without a UTF-8 BOM, and as Excel's "Unicode
  text" (UTF-16 with a BOM, tab-delimited);
- by openpyxl as an `.xlsx` workbook.

The real CLI (`prepare --layout conversation`) then writes one chat example per conversation,
and those messages must be the sheet's cells as the README's rules read them, computed here and
not by convtune's reader: whitespace around a cell stripped, a line break inside one as `\\n`, a
row with both cells empty skipped, a `###` row ending a conversation. A message holding `###` is
the one documented refusal: exit 1, nothing written, the separator named.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convtune.cli.main import main

openpyxl = pytest.importorskip("openpyxl")

SEPARATOR = "###"
FRAGMENTS = [
    "Hello",
    "a",
    " ",
    "\n",
    "\r\n",
    '"',
    "'",
    ",",
    ";",
    "\t",
    "|",
    "#",
    "é",
    "日本語",
    "Привет",
    "مرحبا",
    "😀",
    "\xa0",
    '""',
    '12" screen',
]
cell = st.lists(st.sampled_from(FRAGMENTS), max_size=5).map("".join)
separator_row = st.sampled_from(
    [(SEPARATOR, SEPARATOR), (SEPARATOR, ""), ("", SEPARATOR), (" ### ", "\n###\n")]
)
row = st.one_of(st.tuples(cell, cell), separator_row)
ACTORS = [
    ("Human", "AI"),
    ("Customer", "Agent"),
    ("Cliente", "Agente"),
    ("ユーザー", "アシスタント"),
]
ACTORS += [("Customer, Inc", "Agent; 2nd line")]  # a header that needs quotes itself


@dataclass(frozen=True)
class Writer:
    """One way a spreadsheet program or library writes CSV (or .xlsx)."""

    library: str  # "csv", "pandas" or "openpyxl"
    delimiter: str = ","
    quoting: int = csv.QUOTE_MINIMAL
    ending: str = "\r\n"
    encoding: str = "utf-8"

    def write(self, rows: list[tuple[str, str]], path) -> None:
        if self.library == "openpyxl":
            book = openpyxl.Workbook()
            sheet = book.active
            for r in rows:
                sheet.append([c if c else None for c in r])
            book.save(path)
        elif self.library == "pandas":
            frame = pd.DataFrame(rows[1:], columns=list(rows[0]))
            frame.to_csv(
                path,
                sep=self.delimiter,
                quoting=self.quoting,
                lineterminator=self.ending,
                encoding=self.encoding,
                index=False,
            )
        else:
            text = io.StringIO()
            out = csv.writer(
                text, delimiter=self.delimiter, quoting=self.quoting, lineterminator=self.ending
            )
            out.writerows(rows)
            path.write_bytes(text.getvalue().encode(self.encoding))


QUOTING = [csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]
WRITERS = [
    Writer(library, delimiter, quoting, ending, encoding)
    for library in ("csv", "pandas")
    for delimiter in (",", ";", "\t")
    for quoting in QUOTING
    for ending in ("\r\n", "\n")
    for encoding in ("utf-8", "utf-8-sig")
]
WRITERS.append(Writer("csv", "\t", csv.QUOTE_MINIMAL, "\r\n", "utf-16"))  # Excel's Unicode text
WRITERS.append(Writer("pandas", "\t", csv.QUOTE_MINIMAL, "\r\n", "utf-16"))
WRITERS.append(Writer("openpyxl"))


def expected_examples(rows: list[tuple[str, str]]) -> list[list[dict]]:
    """The chat examples of `--layout conversation`, by the README's rules (not convtune's)."""
    examples: list[list[dict]] = []
    current: list[dict] = []

    def finish() -> None:
        replied = [i for i, m in enumerate(current) if m["role"] == "assistant"]
        if replied:
            examples.append(current[: replied[-1] + 1])

    for first, second in rows:
        first, second = (c.replace("\r\n", "\n").strip() for c in (first, second))
        filled = [c for c in (first, second) if c]
        if not filled:
            continue
        if all(c == SEPARATOR for c in filled):
            finish()
            current = []
            continue
        if first:
            current.append({"role": "user", "content": first})
        if second:
            current.append({"role": "assistant", "content": second})
    finish()
    return examples


def holds_separator(rows: list[tuple[str, str]]) -> bool:
    """True when a message (not a separator row) holds `###`: the documented refusal."""
    for r in rows:
        filled = [c.strip() for c in r if c.strip()]
        if filled and not all(c == SEPARATOR for c in filled) and any(SEPARATOR in c for c in r):
            return True
    return False


def prepare(tmp_path_factory, writer: Writer, rows) -> tuple[int, str, list[list[dict]] | None]:
    folder = tmp_path_factory.mktemp("roundtrip")
    src = folder / ("sheet.xlsx" if writer.library == "openpyxl" else "sheet.csv")
    writer.write(rows, src)
    out = folder / "out"
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(
            ["prepare", str(src), "-o", str(out), "--layout", "conversation", "--context", "all",
             "--valid-ratio", "0", "--no-tokens"]
        )  # fmt: skip
    if code != 0:
        assert not out.exists() or not any(out.iterdir()), "a refused file wrote output"
        return code, sink.getvalue(), None
    with open(out / "sheet.train.jsonl", encoding="utf-8") as f:
        return code, sink.getvalue(), [json.loads(line)["messages"] for line in f]


@settings(
    max_examples=int(os.environ.get("PROP_EXAMPLES", 160)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(row, min_size=1, max_size=8),
    actors=st.sampled_from(ACTORS),
    writer=st.sampled_from(WRITERS),
    poison=st.integers(0, 11),
)
def test_written_sheets_are_read_back_exactly(tmp_path_factory, rows, actors, writer, poison):
    if poison == 0:  # now and then, a message that holds the separator
        rows = [*rows, ("a ### in a message", "reply")]
    code, output, got = prepare(tmp_path_factory, writer, [actors, *rows])
    if holds_separator(rows):
        assert code == 1 and "separator" in output, output
        return
    want = expected_examples(rows)
    if not want:
        assert code == 1 and "no exchanges" in output, output
        return
    assert code == 0, output
    assert got == want


def test_writers_cover_what_spreadsheet_programs_write():
    """The matrix above holds each delimiter, quoting mode, line ending and byte-order mark."""
    csvs = [w for w in WRITERS if w.library != "openpyxl"]
    assert {w.delimiter for w in csvs} == {",", ";", "\t"}
    assert set(QUOTING) <= {w.quoting for w in csvs}
    assert {w.ending for w in csvs} == {"\r\n", "\n"}
    assert {w.encoding for w in csvs} == {"utf-8", "utf-8-sig", "utf-16"}
    assert {w.library for w in WRITERS} == {"csv", "pandas", "openpyxl"}
