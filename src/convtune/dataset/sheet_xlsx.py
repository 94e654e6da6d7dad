"""Reading an .xlsx sheet row by row, as the user sees it in Excel, and never silently less.

openpyxl's read-only mode streams rows but leaves out what a silent loss hides in:

- the sheet's declared size (`<dimension>`) can be wrong (some writers put `A1`): read-only
  mode would stop there, so the dimensions are reset and every stored row is read;
- a formula with no saved value reads as an empty cell (a dropped reply), and a workbook
  written by a program that asks Excel to recalculate on opening (`fullCalcOnLoad`) holds
  placeholder values: both are errors naming the cell, found by a pass over the sheet's XML
  that runs only when the XML holds a formula;
- an error value (`#N/A`, `#DIV/0!`) is an error naming the cell, not the text "#N/A";
- merged cells are not exposed in read-only mode: the sheet's XML is scanned for
  `<mergeCell ref=...>` (streaming, a byte search per chunk), and a merge that touches the
  first two columns is an error (which row would the text belong to?);
- hidden sheets: by default the first *visible* sheet is read; hidden rows are read, with a
  warning (the user does not see them in Excel);
- numbers, dates, times and booleans become the text Excel shows (see `cell_text`).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from ..errors import ConvtuneError, InputError
from .cell_text import cell_text, newlines
from .findings import Findings

CHUNK = 1 << 20
MAIN_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
ACTOR_COLUMNS = 2  # A and B: the columns whose cells become messages

Row = tuple[int, list[str]]


@dataclass
class XlsxSource:
    """An opened sheet: its rows, its name, and how far reading has got (for progress)."""

    rows: Iterator[Row]
    title: str
    size: int
    position: Callable[[], int]


def open_xlsx(
    path: Path, sheet: str | None, findings: Findings, *, columns: int | None = ACTOR_COLUMNS
) -> XlsxSource:
    """Open the chosen sheet of `path`, check its XML, and return its row stream.

    `columns`: how many columns, from A, hold text that is read (merged cells and formulas
    without values there are errors); None for every column."""
    read = columns if columns is not None else 1 << 30
    try:
        import openpyxl
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("reading .xlsx needs openpyxl", path=path) from exc
    # a file object: openpyxl refuses a path whose name does not end in .xlsx (a workbook saved
    # as "export.csv" is still a workbook)
    handle = open(path, "rb")  # noqa: SIM115 - closed with the book, by the row generator
    try:
        book = openpyxl.load_workbook(handle, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged file
        handle.close()
        raise InputError(f"cannot open as an Excel workbook: {exc}", path=path) from None
    try:
        ws = _choose(path, book, sheet, findings)
        size = ws.max_row or 0  # the declared size: only an estimate, for progress
        ws.reset_dimensions()
        xml = ws._worksheet_path  # openpyxl keeps the sheet's part name here
        with zipfile.ZipFile(path) as archive:
            has_formula = _scan(archive, xml, findings, read)
            if has_formula:
                _check_formulas(archive, xml, _recalculates(archive), findings, read)
    except BaseException:
        book.close()
        handle.close()
        raise
    state = {"row": 0}
    rows = _rows(path, book, handle, ws, state, findings)
    return XlsxSource(rows, ws.title, size, lambda: state["row"])


def _choose(path: Path, book, name: str | None, findings: Findings):
    """The sheet named `name`, or the first visible worksheet (with a warning if there are more)."""
    names = book.sheetnames
    worksheets = book.worksheets  # chartsheets are not among them
    if name is not None:
        if name not in names:
            raise InputError(
                f"no sheet named {name!r}",
                path=path,
                hint="sheets: " + ", ".join(repr(n) for n in names),
            )
        ws = book[name]
        if ws not in worksheets:
            raise InputError(f"the sheet {name!r} is a chart, not a table", path=path)
        return ws
    if not worksheets:
        raise InputError("the workbook has no worksheet (only charts)", path=path)
    visible = [ws for ws in worksheets if ws.sheet_state == "visible"]
    ws = visible[0] if visible else worksheets[0]
    if len(names) > 1:
        hidden = [w.title for w in worksheets if w.sheet_state != "visible"]
        which = "first visible" if hidden and ws is not worksheets[0] else "first"
        findings.warning(
            "several_sheets",
            f"the workbook has {len(names)} sheets; read the {which} one, {ws.title!r}"
            " (choose another with --sheet)",
            detail=", ".join(repr(n) + (" (hidden)" if n in hidden else "") for n in names),
        )
    return ws


def _scan(
    archive: zipfile.ZipFile, xml: str, findings: Findings, columns: int = ACTOR_COLUMNS
) -> bool:
    """One streaming pass over the sheet's raw XML: merged cells, hidden rows, any formula?"""
    has_formula = False
    refs: set[bytes] = set()
    hidden: set[int] = set()  # rows hidden in Excel
    with archive.open(xml) as f:
        data = f.read(CHUNK)
        found = re.search(rb"<(?:([A-Za-z_][\w.-]*):)?worksheet\b", data[:4096])
        prefix = found.group(1) + b":" if found and found.group(1) else b""
        formula_tags = tuple(b"<" + prefix + b"f" + end for end in (b">", b" ", b"/"))
        merge = re.compile(rb"<" + prefix + rb'mergeCell\b[^>]*?\bref="([^"]+)"')
        row = re.compile(rb"<" + prefix + rb"row\b([^>]*)>")
        tail = b""
        while data:
            window = tail + data
            if not has_formula and any(tag in window for tag in formula_tags):
                has_formula = True
            if b"mergeCell" in window:
                refs.update(m.group(1) for m in merge.finditer(window))
            if b"hidden=" in window:
                for m in row.finditer(window):
                    attrs = m.group(1)
                    number = re.search(rb'\br="(\d+)"', attrs)
                    if number and re.search(rb'\bhidden="(?:1|true)"', attrs):
                        hidden.add(int(number.group(1)))
            tail = window[-512:]
            data = f.read(CHUNK)
    for number in sorted(hidden):
        findings.warning(
            "hidden_rows",
            "rows hidden in Excel (or filtered out) are read too: unhide them to check them,"
            " and delete the ones that should not be read",
            number,
        )
    for ref in sorted(refs, key=lambda r: _range(r.decode("ascii", "replace"))):
        text = ref.decode("ascii", "replace")
        first_row, first_col, _last_row, _last_col = _range(text)
        if first_col <= columns:
            findings.error(
                "merged_cells",
                "merged cells in the columns read: each row needs its own message and reply"
                " cells (select them and unmerge: Home > Merge & Center > Unmerge Cells)",
                first_row,
                detail=text,
            )
    return has_formula


def _range(ref: str) -> tuple[int, int, int, int]:
    """'A2:B3' -> (first row, first column, last row, last column), 1-based."""
    ends = [_cell(part) for part in ref.split(":")]
    (r1, c1), (r2, c2) = ends[0], ends[-1]
    return min(r1, r2), min(c1, c2), max(r1, r2), max(c1, c2)


def _cell(ref: str) -> tuple[int, int]:
    """'AB12' -> (12, 28)."""
    letters = ref.rstrip("0123456789").lstrip("$").replace("$", "")
    digits = ref[len(ref.rstrip("0123456789")) :]
    column = 0
    for ch in letters.upper():
        column = column * 26 + (ord(ch) - 64)
    return int(digits or 0), column


def _recalculates(archive: zipfile.ZipFile) -> bool:
    """True when the workbook asks to be recalculated on opening (its saved values are stale)."""
    name = next((n for n in archive.namelist() if n.endswith("workbook.xml")), None)
    if name is None:
        return False
    head = archive.read(name)
    return re.search(rb'fullCalcOnLoad="(?:1|true)"', head) is not None


def _check_formulas(
    archive: zipfile.ZipFile,
    xml: str,
    recalculates: bool,
    findings: Findings,
    columns: int = ACTOR_COLUMNS,
) -> None:
    """Errors for formulas in the columns read whose value was never saved (or is stale)."""
    c_tag, f_tag, v_tag = MAIN_NS + "c", MAIN_NS + "f", MAIN_NS + "v"
    data = None
    with archive.open(xml) as f:
        for event, elem in ElementTree.iterparse(f, events=("start", "end")):
            if event == "start":
                if elem.tag == MAIN_NS + "sheetData":
                    data = elem
                continue
            if elem.tag == MAIN_NS + "row" and data is not None:
                data.clear()  # bounded memory: rows are done with once read
                continue
            if elem.tag != c_tag:
                continue
            formula = elem.find(f_tag)
            if formula is None:
                continue
            ref = elem.get("r", "")
            row, column = _cell(ref) if ref else (0, 0)
            if column > columns:
                continue
            value = elem.find(v_tag)
            saved = value is not None and bool(value.text)
            kind = elem.get("t", "n")
            text = f"cell {ref}: ={(formula.text or '')[:60]}"
            if not saved and kind not in ("str", "s", "inlineStr"):
                findings.error(
                    "formula_without_value",
                    "a formula with no saved value: its cell would read as empty (open the"
                    " workbook in Excel or LibreOffice and save it, or paste the values; a"
                    " message that starts with '=' must be typed as text: '=)",
                    row or None,
                    detail=text,
                )
            elif recalculates:
                findings.error(
                    "formula_not_calculated",
                    "a formula whose saved value cannot be trusted: the workbook was written by"
                    " a program that leaves the calculation to Excel (open it in Excel or"
                    " LibreOffice and save it, or paste the values)",
                    row or None,
                    detail=text,
                )


def _rows(path: Path, book, handle, ws, state: dict, findings: Findings) -> Iterator[Row]:
    """Each row's cells as text (A, B, ...), with its row number; error values are errors."""
    try:
        for number, cells in enumerate(ws.iter_rows(), start=1):
            state["row"] = number
            texts: list[str] = []
            for cell in cells:
                value = cell.value
                if value is None:
                    texts.append("")
                elif type(value) is str:
                    if cell.data_type == "e":
                        findings.error(
                            "error_value",
                            "a cell shows an error value instead of text: fix its formula, or"
                            " type the text",
                            number,
                            detail=f"cell {cell.coordinate}: {value}",
                        )
                        texts.append("")
                    else:
                        texts.append(newlines(value))
                else:
                    texts.append(cell_text(value, cell.number_format))
            yield number, texts
    except ConvtuneError:
        raise
    except Exception as exc:  # a damaged sheet: openpyxl raises many kinds mid-stream
        raise InputError(
            f"cannot read the sheet {ws.title!r}: {type(exc).__name__}: {exc}",
            path=path,
            line=state["row"] or None,
        ) from None
    finally:
        book.close()
        handle.close()
