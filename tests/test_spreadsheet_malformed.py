"""Malformed spreadsheets: every way a row could be merged, dropped or invented is either read as
Excel shows it or is an error with its line (a warning where nothing is lost)."""

from __future__ import annotations

import re
import zipfile
from datetime import date, datetime, time

import pytest

from convtune import InputError, OptionError

from .test_spreadsheet import read, texts

openpyxl = pytest.importorskip("openpyxl")


def codes(findings, level="error"):
    return {f.code: f.lines for f in findings.to_list() if f.level == level}


# -- No exchange at all ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Human;AI\n", "nothing after the header row"),
        ("Human;AI\n\n;\n", "nothing after the header row"),
        ("Human;AI\n###;###\n###;\n", "only separator rows after the header row"),
        ("Human;AI\nhello?;\nanyone?;  \n", "no row has a reply in the 'AI' column"),
    ],
)
def test_no_exchange_is_an_error_that_says_why(write, text, why):
    _, convs, findings = read(write(text))
    assert not any(m.role == "assistant" for c in convs for m in c.messages)
    [error] = findings.errors
    assert error.code == "no_exchanges" and error.lines == []
    assert error.message.startswith(f"no exchanges: {why}")


# -- Quotes ---------------------------------------------------------------------------------------


def test_unclosed_quote_names_the_line_where_it_opened(write):
    text = 'Human;AI\nfirst;"ok"\nHello;"I am\nx;y\nz;w\n'
    _, convs, findings = read(write(text))
    assert codes(findings) == {"unclosed_quote": [3]}
    assert texts(convs) == [[("user", "first"), ("assistant", "ok")]]  # the rest is not read


def test_unclosed_quote_after_a_multiline_cell_in_the_same_row(write):
    text = 'Human;AI\n"two\nlines";"never closed\nx;y\n'
    _, _, findings = read(write(text))
    assert codes(findings) == {"unclosed_quote": [3]}


def test_text_after_a_closing_quote(write):
    _, _, findings = read(write('Human;AI\nHello;"I am" here\nok;fine\n'))
    assert codes(findings) == {"text_after_quote": [2]}


def test_stray_quote_that_closes_on_a_later_line_is_an_error(write):
    text = 'Human;AI\nHello;"I am\nx;y\nfoo;"bar"\n'
    _, _, findings = read(write(text))
    assert codes(findings) == {"quote_merges_rows": [2]}
    assert "lines 2-4" in findings.by_code["quote_merges_rows"].example


def test_stray_quote_that_closes_cleanly_then_leaves_a_quote_in_an_unquoted_cell(write):
    # the stray quote before Hello runs on until the quote that opens the next row's cell; that
    # cell's closing quote is then inside an unquoted cell: malformed by the grammar
    text = 'Human;AI\n"Hello;reply\n";x";z\nok;fine\n'
    _, _, findings = read(write(text))
    assert codes(findings) == {"quote_in_unquoted_cell": [3], "extra_columns": [2]}


@pytest.mark.parametrize(
    ("swallowed", "kind"),
    [
        ("###;###", "a separator row"),
        ("###", "a separator row"),
        (" ### ;", "a separator row"),
        ("Human;AI", "the header row"),
        ("Human;AI;;", "the header row"),
    ],
)
def test_quoted_cell_that_swallows_a_row_of_the_file_names_both_lines(write, swallowed, kind):
    # grammatical CSV, but the quote that opens on line 3 runs over line 5, plainly a row
    text = f'Human;AI\nhi;yes\nHello;"stray\nq;r\n{swallowed}\nx;y"\nok;fine\n'
    _, _, findings = read(write(text))
    assert findings.by_code["quote_swallows_rows"].lines == [3]
    example = findings.by_code["quote_swallows_rows"].example
    assert f"the quote opens on line 3; line 5 is {kind}" in example


def test_swallowed_row_in_a_crlf_file_with_a_bom_and_the_sep_line(write):
    text = '\ufeffsep=,\r\nCustomer,Agent\r\nhi,"open\r\nCustomer,Agent\r\nok"\r\n'
    _, _, findings = read(write(text))
    assert "line 4 is the header row" in findings.by_code["quote_swallows_rows"].example


def test_multiline_cells_that_hold_and_end_with_the_delimiter_are_read_cell_for_cell(write):
    # RFC 4180: both cells are quoted, span two lines, hold commas, and the first ends with one
    text = (
        "Human,AI\n"
        '"It\'s a team effort.\nOh, and she has wit,","Yeah, true. :) Her accent is her power!\n'
        'Anyways, I gotta go!"\n'
        "###,###\n"
        "hi,there\n"
    )
    _, convs, findings = read(write(text))
    assert texts(convs) == [
        [
            ("user", "It's a team effort.\nOh, and she has wit,"),
            ("assistant", "Yeah, true. :) Her accent is her power!\nAnyways, I gotta go!"),
        ],
        [("user", "hi"), ("assistant", "there")],
    ]
    assert not findings.errors
    assert findings.by_code["multiline_cell_with_delimiter"].lines == [2, 3]


def test_lost_opening_quote_is_an_error(write):
    # 'Hello;"line1\nline2;x"' lost its opening quote: the cell's lines became rows
    _, _, findings = read(write('Human;AI\nHello;line1\nline2;x"\nq;r\n'))
    assert codes(findings) == {"quote_in_unquoted_cell": [3]}


@pytest.mark.parametrize("row", ['Hello; "Hi there"', 'Hello;12" screen', 'a;#"##'])
def test_quote_inside_an_unquoted_cell_is_an_error(write, row):
    # Excel would read it as text, but never writes it: a stray quote ('#"##' was a separator)
    _, _, findings = read(write(f"Human;AI\nhi;yes\n{row}\n"))
    assert codes(findings) == {"quote_in_unquoted_cell": [3]}
    assert "with no space before it" in findings.errors[0].message


def test_excel_multiline_cells_keep_working(write):
    text = (
        'Human;AI\r\nHello;"line one\r\nline ""two"""\r\n'
        '"a\nb";"c\r\n\r\nd"\r\n'  # LF or CRLF inside quotes: line breaks in the message
        "q;r\r\n"
    )
    _, convs, findings = read(write(text))
    assert texts(convs) == [
        [
            ("user", "Hello"),
            ("assistant", 'line one\nline "two"'),
            ("user", "a\nb"),
            ("assistant", "c\n\nd"),
            ("user", "q"),
            ("assistant", "r"),
        ]
    ]
    assert [m.line for m in convs[0].messages] == [2, 2, 4, 4, 8, 8]
    assert not findings.errors and not findings.warnings


def test_lone_cr_inside_a_quoted_cell_is_a_line_break_with_a_warning(write):
    # valid CSV (the grammar allows any character inside quotes): read as Excel shows it
    _, convs, findings = read(write('Human;AI\nhi;yes\n;"two\nlines and a\rstray"\nq;r\n'))
    assert not findings.errors
    assert codes(findings, "warning")["cr_in_cell"] == [4]
    assert convs[0].messages[2].text == "two\nlines and a\nstray"


def test_multiline_cell_with_the_delimiter_on_a_later_line_warns(write):
    text = 'Human;AI\nHello;"line one\nline; two"\nq;r\n'
    _, convs, findings = read(write(text))
    assert convs[0].messages[1].text == "line one\nline; two"
    assert codes(findings, "warning") == {"multiline_cell_with_delimiter": [2]}
    assert not findings.errors


# -- Line breaks, NUL, encodings ------------------------------------------------------------------


def test_stray_cr_is_an_error_with_its_line(write):
    _, _, findings = read(write("Human;AI\nhi;yes\nHel\rlo;there\nq;r\n"))
    assert codes(findings) == {"line_break_in_row": [3]}


def test_crlf_and_a_cr_before_the_line_end_are_fine(write):
    _, convs, findings = read(write("Human;AI\r\nhi;yes\r\r\nq;r"))
    assert texts(convs) == [
        [("user", "hi"), ("assistant", "yes"), ("user", "q"), ("assistant", "r")]
    ]
    assert not findings.errors


def test_old_mac_cr_only_file_reads_as_rows(write):
    sheet, convs, findings = read(write('Human;AI\rHello;"two\rlines"\r###;###\rq;r\r'))
    assert sheet.actors == ("Human", "AI")
    assert texts(convs) == [
        [("user", "Hello"), ("assistant", "two\nlines")],
        [("user", "q"), ("assistant", "r")],
    ]
    assert [c.messages[0].line for c in convs] == [2, 5]
    assert not findings.errors


def test_lf_inside_a_row_of_a_cr_only_file_is_an_error(write):
    _, _, findings = read(write("Human;AI\rhi;ye\ns\rq;r\r"))
    assert codes(findings) == {"line_break_in_row": [2]}
    assert "line feed" in findings.errors[0].message


def test_nul_is_an_error_with_its_line(write):
    with pytest.raises(InputError, match=r":3: a NUL character"):
        read(write(b"Human;AI\nhi;yes\nHel\x00lo;there\n"))


def test_nul_far_into_a_big_file_has_the_right_line(write):
    body = "".join(f"q{i};a{i}\n" for i in range(60_000))  # several read chunks
    with pytest.raises(InputError, match=r":60002: a NUL character"):
        read(write(("Human;AI\n" + body + "x\x00;y\n").encode()))


def test_utf16_without_bom_suggests_the_encoding(write):
    data = "Human\tAI\r\nHello\tyes\r\n".encode("utf-16-le")
    with pytest.raises(InputError, match="UTF-16") as err:
        read(write(data))
    assert "--encoding utf-16-le" in str(err.value)
    _, convs, _ = read(write(data), encoding="utf-16-le")
    assert texts(convs) == [[("user", "Hello"), ("assistant", "yes")]]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_byte_order_marks_decide_the_encoding(write, encoding):
    text = "Human\tAI\r\nHola\t¿Qué tal? 😀\r\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    sheet, convs, findings = read(write(data), encoding="cp1252")  # the BOM wins
    assert sheet.actors == ("Human", "AI") and sheet.delimiter == "\t"
    assert texts(convs) == [[("user", "Hola"), ("assistant", "¿Qué tal? 😀")]]
    assert not findings.errors


def test_utf8_file_read_as_cp1252_warns(write):
    _, _, findings = read(write("Human;AI\nhola;¿qué?\n"), encoding="cp1252")
    assert "encoding_looks_utf8" in codes(findings, "warning")


def test_excel_sep_line_names_the_delimiter(write):
    sheet, convs, _ = read(write("sep=,\r\nHuman,AI\r\nhi; there,yes\r\n"))
    assert sheet.delimiter == "," and sheet.actors == ("Human", "AI")
    assert texts(convs) == [[("user", "hi; there"), ("assistant", "yes")]]
    assert convs[0].line == 3


def test_delimiter_detection_respects_quotes_and_unicode_line_separators(write):
    sheet, _, _ = read(write('"Customer, Inc, VIP";Agent\nhi;yes\n'))
    assert sheet.delimiter == ";" and sheet.actors == ("Customer, Inc, VIP", "Agent")
    sheet, _, _ = read(write("Hu\u2028man;A,I\nhi;yes\n"))  # str.splitlines cuts at U+2028
    assert sheet.delimiter == ";" and sheet.actors == ("Hu\u2028man", "A,I")


@pytest.mark.parametrize("delimiter", ['"', "\n", ";;"])
def test_bad_delimiter_option(write, delimiter):
    with pytest.raises(OptionError, match="one character"):
        read(write("Human;AI\nhi;yes\n"), delimiter=delimiter)


# -- Rows and columns ------------------------------------------------------------------------------


def test_extra_columns_and_separator_rows_over_more_columns(write):
    text = "Human;AI\nhi;yes;surprise\nok;fine\n###;###;###\n;;###\nq;r\n"
    _, convs, findings = read(write(text))
    assert codes(findings) == {"extra_columns": [2]}
    assert [len(c.messages) for c in convs] == [2, 2]


def test_row_with_no_delimiter_is_an_error_but_a_lone_separator_is_fine(write):
    _, convs, findings = read(write("Human;AI\nhi;yes\nno reply here\n###\nq;r\n"))
    assert codes(findings) == {"missing_delimiter": [3]}
    assert len(convs) == 2


def test_row_wider_than_the_header_is_two_rows_joined(write):
    # ";\r\n" + "a;\r\n" lost the line break between them: "a" would become a reply
    _, _, findings = read(write("Human;AI\nhi;yes\n;a;\n"))
    assert codes(findings) == {"row_wider_than_header": [3]}
    # "a;" + "b;" lost the line break between them: "b" would become a reply
    _, _, findings = read(write("Human;AI\nhi;yes\na;b;\n"))
    assert codes(findings) == {"row_wider_than_header": [3]}
    # Excel's trailing empty columns, the same in every row, are fine; so is a wider row with
    # no reply ("a;" + ";" is "a;;": nothing moved from one column to the other)
    _, convs, findings = read(write("Human;AI;;\nhi;yes;;\n"))
    assert not findings.errors and len(convs) == 1
    _, convs, findings = read(write("Human;AI\nhi;yes\nq;;\n"))
    assert not findings.errors and len(convs[0].messages) == 3


def test_repeated_header_is_an_error(write):
    _, _, findings = read(write(b"Human;AI\nhi;yes\n\xef\xbb\xbfHuman;AI\nq;r\nHuman;AI\n"))
    assert codes(findings) == {"repeated_header": [3, 5]}


# -- The header row --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Human;\nhi;yes\n", "names one actor"),
        (";AI\nhi;yes\n", "names one actor"),
        ("AI;AI\nhi;yes\n", "both actors are named 'AI'"),
        ("###;###\nhi;yes\n", "separator row"),
        ("Hello, how are you?;I'm fine, thanks\nq;r\n", "looks like an exchange"),
        ('"Hi\nthere";AI\nq;r\n', "is the first row an exchange"),
        ("Human;AI;Narrator\nhi;yes;no\n", "3 non-empty columns"),
        (";Human;AI\n;hi;yes\n", "first two columns, not in columns B and C"),
        ("Hi there how are you today;AI\nq;r\n", "looks like an exchange"),
    ],
)
def test_bad_header_rows(write, text, match):
    with pytest.raises(InputError, match=match) as err:
        read(write(text))
    assert ":1:" in str(err.value)


# -- Other files -----------------------------------------------------------------------------------


def test_old_excel_and_other_formats_are_refused(tmp_path):
    xls = tmp_path / "old.csv"
    xls.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600)
    with pytest.raises(InputError, match=r"97-2003"):
        read(xls)
    ods = tmp_path / "sheet.ods"
    with zipfile.ZipFile(ods, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("content.xml", "<x/>")
    with pytest.raises(InputError, match="OpenDocument"):
        read(ods)
    fake = tmp_path / "fake.xlsx"
    fake.write_text("Human;AI\nhi;yes\n")
    with pytest.raises(InputError, match="not a ZIP"):
        read(fake)


# -- .xlsx -----------------------------------------------------------------------------------------


def save(book, tmp_path, name="book.xlsx"):
    path = tmp_path / name
    book.save(path)
    return path


def patch(path, part, edit):
    """Rewrite one XML part of a saved workbook (what openpyxl cannot write: cached values)."""
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    parts[part] = edit(parts[part].decode()).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in parts.items():
            z.writestr(n, data)


def book_with(rows):
    book = openpyxl.Workbook()
    for r in rows:
        book.active.append(r)
    return book


def test_xlsx_empty_sheet_and_header_only(tmp_path):
    with pytest.raises(InputError, match="no exchanges: the file is empty"):
        read(save(openpyxl.Workbook(), tmp_path))
    _, _, findings = read(save(book_with([("Human", "AI")]), tmp_path, "h.xlsx"))
    assert findings.errors[0].message.startswith("no exchanges: nothing after the header row")


def test_xlsx_formula_without_value_is_an_error_naming_the_cell(tmp_path):
    book = book_with([("Human", "AI"), ("hi", '=A2&" there"'), ("q", "r")])
    _, _, findings = read(save(book, tmp_path))
    [error] = findings.errors
    assert error.code == "formula_without_value" and error.lines == [2]
    assert error.example.startswith("cell B2: =A2")


def test_xlsx_formula_with_a_saved_value(tmp_path):
    path = save(book_with([("Human", "AI"), ("hi", "=A2"), ("q", "r")]), tmp_path)
    sheet = "xl/worksheets/sheet1.xml"
    patch(
        path,
        sheet,
        lambda x: x.replace('<c r="B2">', '<c r="B2" t="str">').replace(
            "<v></v>", "<v>computed reply</v>"
        ),
    )
    # written by a program that leaves the calculation to Excel: the value cannot be trusted
    _, _, findings = read(path)
    assert codes(findings) == {"formula_not_calculated": [2]}
    # saved by Excel (no recalculation asked): the saved value is what the user sees
    patch(path, "xl/workbook.xml", lambda x: re.sub(r'fullCalcOnLoad="1"', "", x))
    _, convs, findings = read(path)
    assert texts(convs)[0][:2] == [("user", "hi"), ("assistant", "computed reply")]
    assert not findings.errors


def test_xlsx_formula_that_gives_empty_text_is_an_empty_cell(tmp_path):
    path = save(book_with([("Human", "AI"), ("hi", '=""'), ("q", "r")]), tmp_path)
    patch(path, "xl/worksheets/sheet1.xml", lambda x: x.replace('<c r="B2">', '<c r="B2" t="str">'))
    patch(path, "xl/workbook.xml", lambda x: re.sub(r'fullCalcOnLoad="1"', "", x))
    _, convs, findings = read(path)
    assert texts(convs) == [[("user", "hi"), ("user", "q"), ("assistant", "r")]]
    assert not findings.errors


@pytest.mark.parametrize("value", ["#N/A", "#DIV/0!", "#REF!"])
def test_xlsx_error_values_are_errors_naming_the_cell(tmp_path, value):
    book = book_with([("Human", "AI"), ("hi", value), ("q", "r")])
    book.active["B2"].data_type = "e"
    _, _, findings = read(save(book, tmp_path))
    [error] = findings.errors
    assert error.code == "error_value" and error.lines == [2]
    assert error.example == f"cell B2: {value}"


def test_xlsx_text_that_looks_like_an_error_is_text(tmp_path):
    book = book_with([("Human", "AI"), ("hi", "#N/A")])
    book.active["B2"].data_type = "s"  # typed as text ('#N/A), not Excel's error value
    _, convs, findings = read(save(book, tmp_path))
    assert texts(convs) == [[("user", "hi"), ("assistant", "#N/A")]]
    assert not findings.errors


def test_xlsx_merged_cells_in_the_actors_columns_are_errors(tmp_path):
    book = book_with([("Human", "AI"), ("hi", "yes"), ("long message", None), (None, None)])
    book.active.append(("q", "r", None, "note", None))
    book.active.merge_cells("A3:B3")
    book.active.merge_cells("A4:A5")
    book.active.merge_cells("D5:E5")  # beyond the actors' columns: not our business
    book.active["D5"] = None
    _, _, findings = read(save(book, tmp_path))
    merged = findings.by_code["merged_cells"]
    assert merged.lines == [3, 4] and merged.example == "A3:B3"


def test_xlsx_hidden_sheet_is_skipped(tmp_path):
    book = openpyxl.Workbook()
    book.active.title = "Old"
    book.active.append(("Buyer", "Seller"))
    book.active.sheet_state = "hidden"
    current = book.create_sheet("Current")
    current.append(("Customer", "Agent"))
    current.append(("hi", "hello"))
    sheet, _, findings = read(save(book, tmp_path))
    assert sheet.actors == ("Customer", "Agent")
    warning = findings.by_code["several_sheets"]
    assert "first visible one, 'Current'" in warning.message
    assert warning.example == "'Old' (hidden), 'Current'"
    sheet, _, _ = read(tmp_path / "book.xlsx", sheet="Old")  # asked for by name: read it
    assert sheet.actors == ("Buyer", "Seller")


def test_xlsx_hidden_rows_are_read_with_a_warning(tmp_path):
    book = book_with([("Human", "AI"), ("hi", "yes"), ("secret", "row"), ("q", "r")])
    book.active.row_dimensions[3].hidden = True
    _, convs, findings = read(save(book, tmp_path))
    assert len(convs[0].messages) == 6
    assert codes(findings, "warning") == {"hidden_rows": [3]}


def test_xlsx_numbers_dates_and_booleans_read_as_excel_shows_them(tmp_path):
    book = book_with([("Human", "AI")])
    ws = book.active
    cells = [
        (1234, "General", "1234"),
        (0.1 + 0.2, "General", "0.3"),
        (1 / 3, "General", "0.33333333333"),
        (123456789012, "General", "1.23457E+11"),
        (42, "0.00", "42.00"),
        (1234567.891, "#,##0", "1,234,568"),
        (1234.5, "#,##0.00", "1,234.50"),
        (0.256, "0%", "26%"),
        (0.256, "0.00%", "25.60%"),
        (date(2024, 1, 5), "yyyy-mm-dd", "2024-01-05"),
        (date(2024, 1, 5), "dd/mm/yyyy", "05/01/2024"),
        (date(2024, 1, 5), "m/d/yy", "1/5/24"),
        (time(9, 5), "h:mm", "9:05"),
        (datetime(2024, 1, 5, 13, 7), "yyyy-mm-dd h:mm", "2024-01-05 13:07"),
        (True, "General", "TRUE"),
        (12.5, "[Red]0.000", "12.500"),
        (7, "# ?/?", "7"),  # fractions: General
    ]
    for i, (value, fmt, _) in enumerate(cells, start=2):
        ws.cell(i, 1, f"row {i}")
        ws.cell(i, 2, value).number_format = fmt
    _, convs, findings = read(save(book, tmp_path))
    replies = [m.text for m in convs[0].messages if m.role == "assistant"]
    assert replies == [want for _, _, want in cells]
    assert not findings.errors


def test_xlsx_wrong_dimension_still_reads_every_row(tmp_path):
    path = save(book_with([("Human", "AI"), ("hi", "yes"), ("q", "r")]), tmp_path)
    patch(
        path,
        "xl/worksheets/sheet1.xml",
        lambda x: re.sub(r'<dimension ref="[^"]+"', '<dimension ref="A1"', x),
    )
    _, convs, _ = read(path)
    assert texts(convs) == [
        [("user", "hi"), ("assistant", "yes"), ("user", "q"), ("assistant", "r")]
    ]


def test_xlsx_line_breaks_in_cells_are_newlines(tmp_path):
    _, convs, _ = read(save(book_with([("Human", "AI"), ("a\r\nb", "c\rd")]), tmp_path))
    assert texts(convs) == [[("user", "a\nb"), ("assistant", "c\nd")]]


def test_workbook_named_csv_is_read_as_a_workbook(tmp_path):
    path = save(book_with([("Human", "AI"), ("hi", "yes")]), tmp_path, "export.csv")
    sheet, convs, _ = read(path)
    assert sheet.delimiter is None and texts(convs) == [[("user", "hi"), ("assistant", "yes")]]
