"""Property: `convtune prepare` never exits 0 having merged, dropped or invented a row.

Spreadsheets are generated as rows of cells (quotes, separators, the delimiter, empty and
whitespace-only cells, line breaks), written as proper CSV, and also broken on purpose
(a quote added or removed, a stray CR, a NUL, an extra column, a lost delimiter or line break).
The real CLI runs in-process on each; the rule checked is the issue's:

- exit 1 and nothing written in the output folder, or
- exit 0 and the number of examples written equals the number of non-empty (after strip) reply
  cells of the generated rows, counted here, not by convtune's reader.

Well-formed files must also be accepted unless they break a documented rule.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convtune.cli.main import main

SEPARATOR = "###"
FRAGMENTS = [
    "a",
    "Hi",
    " ",
    "  ",
    '"',
    ";",
    ",",
    "\t",
    "\n",
    "\r\n",
    "\r",
    SEPARATOR,
    "é",
    "\u2028",
    "\xa0",
    "\ufeff",
    "''",
]
cell = st.lists(st.sampled_from(FRAGMENTS), max_size=4).map("".join)
row = st.one_of(
    st.tuples(cell, cell),
    st.sampled_from([(SEPARATOR, SEPARATOR), (SEPARATOR, ""), ("", ""), ("  ", " ")]),
)
rows_strategy = st.lists(row, max_size=8)
delimiters = st.sampled_from([";", ",", "\t"])
endings = st.sampled_from(["\r\n", "\n"])
SETTINGS = settings(
    max_examples=70,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def quote(cell: str, delimiter: str) -> str:
    """A cell as Excel writes it: quoted (quotes doubled) if it holds a delimiter, quote or line
    break. (Python 3.11's csv.writer leaves a lone CR unquoted when the line ending is LF.)"""
    if any(ch in cell for ch in (delimiter, '"', "\r", "\n")):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def render(rows, delimiter: str, ending: str) -> tuple[str, list[int], list[int], list[range]]:
    """The CSV text, where its data rows' line endings and delimiters are (offsets), and the
    insides of its quoted cells (offset ranges between the quotes)."""
    parts: list[str] = []
    size = 0
    ends: list[int] = []
    delims: list[int] = []
    quoted: list[range] = []
    for number, r in enumerate([("Human", "AI"), *rows]):
        for i, c in enumerate(r):
            if i:
                if number:
                    delims.append(size)
                parts.append(delimiter)
                size += 1
            text = quote(c, delimiter)
            if text.startswith('"'):
                quoted.append(range(size + 1, size + len(text)))
            parts.append(text)
            size += len(text)
        if number:
            ends.append(size)
        parts.append(ending)
        size += len(ending)
    return "".join(parts), ends, delims, quoted


def to_csv(rows, delimiter: str, ending: str) -> str:
    return render(rows, delimiter, ending)[0]


def is_separator(first: str, second: str) -> bool:
    filled = [c.strip() for c in (first, second) if c.strip()]
    return bool(filled) and all(c == SEPARATOR for c in filled)


def expected_examples(rows) -> int:
    """One example per non-empty reply cell of a row that is not a separator row."""
    return sum(1 for a, b in rows if b.strip() and not is_separator(a, b))


def breaks_a_rule(rows) -> bool:
    """A well-formed file that the documented rules refuse (README: the input spreadsheet)."""
    for a, b in rows:
        if is_separator(a, b):
            continue
        if (a.strip(), b.strip()) == ("Human", "AI"):
            return True  # the header row again
        if SEPARATOR in a or SEPARATOR in b:
            return True  # the separator inside a message, or beside text
    return expected_examples(rows) == 0  # no exchanges


def run_cli(tmp_path_factory, text: str | bytes) -> tuple[int, list[str], int | None]:
    """(exit code, files in the output folder, examples written) for `prepare` on `text`."""
    folder = tmp_path_factory.mktemp("prop")
    src = folder / "sheet.csv"
    src.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    out = folder / "out"
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(["prepare", str(src), "-o", str(out), "--valid-ratio", "0", "--no-tokens"])
    files = sorted(p.name for p in out.iterdir()) if out.exists() else []
    written = None
    if code == 0:
        with open(out / "sheet.train.jsonl", encoding="utf-8") as f:
            written = sum(1 for line in f if json.loads(line))
    return code, files, written


def check_rule(code: int, files: list[str], written: int | None, rows) -> None:
    assert code in (0, 1), code
    if code == 1:
        assert files == [], files
    else:
        assert written == expected_examples(rows)


@SETTINGS
@given(rows=rows_strategy, delimiter=delimiters, ending=endings)
def test_well_formed_csv_keeps_every_reply(tmp_path_factory, rows, delimiter, ending):
    code, files, written = run_cli(tmp_path_factory, to_csv(rows, delimiter, ending))
    check_rule(code, files, written, rows)
    if not breaks_a_rule(rows):
        assert code == 0, "a well-formed file was refused"


def mutate(rows, delimiter: str, ending: str, kind: str, where: float) -> str:
    """The rows as CSV, broken once at the relative position `where` (0..1).

    Quotes and NULs go anywhere after the header (a broken header is its own test); a CR, an
    extra column, a lost delimiter or a lost line break go where a row has them, not inside a
    quoted cell (the CSV grammar allows any character there: that would only edit a message,
    which no reader can tell).
    """
    text, ends, delims, quoted = render(rows, delimiter, ending)
    body = text.index(ending) + len(ending)
    at = body + int(where * (len(text) - body))
    if kind == "stray_cr":
        inside = {i for span in quoted for i in span}
        places = [i for i in range(body, len(text) + 1) if i not in inside]
        at = places[int(where * len(places))]
    if kind in ("add_quote", "stray_cr", "nul"):
        mark = {"add_quote": '"', "stray_cr": "\r", "nul": "\x00"}[kind]
        return text[:at] + mark + text[at:]
    if kind == "drop_quote":
        positions = [i for i, ch in enumerate(text) if ch == '"' and i >= body]
    else:
        positions = delims if kind == "drop_delimiter" else ends
    if not positions:
        return text
    i = positions[int(where * len(positions))]
    if kind == "extra_column":
        return text[:i] + delimiter + "x" + text[i:]
    width = len(ending) if kind == "drop_line_break" else 1
    return text[:i] + text[i + width :]


KINDS = [
    "add_quote",
    "drop_quote",
    "stray_cr",
    "nul",
    "extra_column",
    "drop_delimiter",
    "drop_line_break",
]


@settings(
    max_examples=int(os.environ.get("PROP_EXAMPLES", 140)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=rows_strategy.filter(bool),
    delimiter=delimiters,
    ending=endings,
    kind=st.sampled_from(KINDS),
    where=st.floats(0, 1, exclude_max=True),
)
def test_broken_csv_is_refused_or_loses_nothing(
    tmp_path_factory, rows, delimiter, ending, kind, where
):
    text = mutate(rows, delimiter, ending, kind, where)
    code, files, written = run_cli(tmp_path_factory, text)
    check_rule(code, files, written, rows)


@SETTINGS
@given(rows=rows_strategy, encoding=st.sampled_from(["utf-16", "utf-8-sig", "utf-32"]))
def test_byte_order_marks_decide_the_encoding(tmp_path_factory, rows, encoding):
    text = to_csv(rows, "\t", "\r\n").encode(encoding)  # Excel's "Unicode text" is UTF-16 + tabs
    code, files, written = run_cli(tmp_path_factory, text)
    check_rule(code, files, written, rows)
    if not breaks_a_rule(rows):
        assert code == 0
