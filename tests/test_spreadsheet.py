"""Reading spreadsheets: delimiters, encodings, Excel quirks, .xlsx, and every layout rule."""

from __future__ import annotations

import pytest

from convtune import Findings, InputError, OptionError, SheetOptions, open_sheet

from .conftest import SEED_SHEET


def read(path, **kw):
    findings = Findings()
    sheet = open_sheet(path, SheetOptions(**kw), findings)
    return sheet, list(sheet.conversations), findings


def texts(convs):
    return [[(m.role, m.text) for m in c.messages] for c in convs]


@pytest.mark.parametrize("delimiter", [";", ",", "\t", "|"])
def test_delimiters_are_detected(write, delimiter):
    text = SEED_SHEET.replace("Well, if you insist", '"Well, if you insist"')
    text = text.replace("No, I can't", '"No, I can\'t"')
    sheet, convs, findings = read(write(text.replace(";", delimiter)))
    assert sheet.delimiter == delimiter
    assert sheet.actors == ("Human", "AI")
    assert [len(c.messages) for c in convs] == [6, 8]
    assert not findings.errors


def test_excel_export_bom_crlf_quotes_multiline_trailing_columns(write):
    text = (
        "\ufeffHuman;AI;;\r\n"
        'Hello;"Hi; I\'m ""Nimbus""\nHow can I help?";;\r\n'
        "   padded   ;  reply  ;;\r\n"
        "###;###;;\r\n"
        "Bye;See you;;\r\n"
    )
    sheet, convs, findings = read(write(text))
    assert sheet.actors == ("Human", "AI")
    assert texts(convs) == [
        [
            ("user", "Hello"),
            ("assistant", 'Hi; I\'m "Nimbus"\nHow can I help?'),
            ("user", "padded"),
            ("assistant", "reply"),
        ],
        [("user", "Bye"), ("assistant", "See you")],
    ]
    # line numbers are those of the file, multi-line cells included
    assert [m.line for m in convs[0].messages] == [2, 2, 4, 4]
    assert convs[1].messages[0].line == 6
    assert not findings.errors and not findings.warnings


def test_delimiter_override(write):
    _sheet, convs, _ = read(write("Human|AI\nhi;there|yes\n"), delimiter="|")
    assert texts(convs) == [[("user", "hi;there"), ("assistant", "yes")]]


def test_tab_delimiter_by_name(write):
    sheet, _convs, _ = read(write("Human\tAI\nhi\tyes\n"), delimiter="tab")
    assert sheet.delimiter == "\t"


def test_not_utf8_names_byte_offset_and_suggests_encoding(write):
    path = write("Human;AI\nHola;¿Qué tal?\n", encoding="cp1252")
    with pytest.raises(InputError) as err:
        read(path)
    message = str(err.value)
    assert str(path) in message and ":2:" in message
    assert "byte 14" in message  # 0-based: "Human;AI\n" is 9 bytes, "Hola;" 5 more
    assert "--encoding cp1252" in message
    _sheet, convs, _ = read(path, encoding="cp1252")
    assert convs[0].messages[1].text == "¿Qué tal?"


def test_unknown_encoding_is_an_option_error(write):
    with pytest.raises(OptionError, match="unknown encoding"):
        read(write(SEED_SHEET), encoding="klingon")


def test_header_with_three_names_is_an_error(write):
    with pytest.raises(InputError, match=r"3 non-empty columns") as err:
        read(write("Human;AI;Narrator\nhi;yes;no\n"))
    assert ":1:" in str(err.value)


def test_header_with_one_column_suggests_delimiter(write):
    with pytest.raises(InputError, match="--delimiter"):
        read(write("Human AI\nhi yes\n"))


@pytest.mark.parametrize("text", ["", "\n\n", "  \r\n"])
def test_empty_file(write, text):
    with pytest.raises(InputError, match=r"^.*: no exchanges: the file is empty"):
        read(write(text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read(tmp_path / "nope.csv")


def test_separator_inside_a_message_is_an_error_with_line(write):
    _, _, findings = read(write("Human;AI\nhi;use ### here\n###;###\nok;fine\n"))
    [error] = findings.errors
    assert error.code == "separator_in_message" and error.lines == [2]


def test_separator_beside_a_message_is_an_error(write):
    _, _, findings = read(write("Human;AI\nhi;yes\n###;oops\n"))
    [error] = findings.errors
    assert error.code == "separator_beside_text" and error.lines == [3]
    assert "with text beside it" in error.message and error.example == "oops"


def test_custom_separator(write):
    _, convs, findings = read(write("Human;AI\na;b\n---;\nc;d\n"), separator="---")
    assert len(convs) == 2 and not findings.warnings


def test_extra_columns_are_an_error(write):
    _, _, findings = read(write("Human;AI\nhi;yes;surprise\n"))
    assert findings.errors[0].code == "extra_columns" and findings.errors[0].lines == [2]


def test_warnings_with_line_numbers(write):
    text = (
        "Human;AI\n"
        "###;###\n"  # 2: empty conversation (nothing before it)
        ";Welcome back!\n"  # 3: reply with no message
        "thanks;np\n"
        "###;###\n"
        "hello?;\n"  # 6: conversation with no reply
        "anyone?;\n"
        "###;###\n"
        "###;###\n"  # 9: empty conversation
        "q;a\n"
        "last words;\n"  # 11: unanswered message at the end
    )
    _, convs, findings = read(write(text))
    by_code = {f.code: f.lines for f in findings.warnings}
    assert by_code == {
        "empty_conversation": [2, 9],
        "reply_without_message": [3],
        "no_reply": [6],
        "unanswered_message": [11],
    }
    assert len(convs) == 3


def test_blank_rows_are_skipped_and_inside_a_conversation_they_warn(write):
    _, convs, findings = read(write("Human;AI\n\nhi;yes\n;\n\nok;sure\n\n;\n"))
    assert [len(c.messages) for c in convs] == [4]
    # blank rows before the first exchange or at the end say nothing; between two exchanges of
    # one conversation they may have been meant as a separator, which they are not
    assert [(f.code, f.lines) for f in findings.warnings] == [("blank_row", [4])]


def test_xlsx_first_sheet_warns_when_several(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    first = book.active
    first.title = "Support"
    for row in [
        ("Customer", "Agent"),
        ("Order 42?", "Shipped"),
        (1234, 5.0),
        ("###", "###"),
        ("hi", None),
    ]:
        first.append(row)
    other = book.create_sheet("Sales")
    other.append(("Buyer", "Seller"))
    other.append(("price?", "10 EUR"))
    path = tmp_path / "book.xlsx"
    book.save(path)
    sheet, convs, findings = read(path)
    assert sheet.actors == ("Customer", "Agent")
    assert texts(convs)[0] == [
        ("user", "Order 42?"),
        ("assistant", "Shipped"),
        ("user", "1234"),
        ("assistant", "5"),
    ]
    assert findings.warnings[0].code == "several_sheets"
    sheet, convs, findings = read(path, sheet="Sales")
    assert sheet.actors == ("Buyer", "Seller")
    assert not findings.warnings
    with pytest.raises(InputError, match="no sheet named 'Nope'"):
        read(path, sheet="Nope")
