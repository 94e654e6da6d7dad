"""Preference (DPO) data: `prepare --format preference` from a sheet with a column of rejected
replies, `check` on the pairs it writes, and the example spreadsheet the DPO trainer uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convtune import PrepareOptions, check_file, prepare
from convtune.dataset.examples import ExampleOptions
from convtune.dataset.preference import read_pairs
from convtune.dataset.prepare_options import assemble
from convtune.dataset.tokens import OpenAICounter
from convtune.errors import InputError, OptionError

from .conftest import ROOT
from .test_check_cli import convtune as run_convtune
from .test_check_cli import write_jsonl
from .test_prepare_cli import prepare_in_process

PREFERENCES = ROOT / "examples" / "preferences.csv"

SHEET = """Human;AI;Rejected
Hi;Hello! How can I help?;What.
Where is my order?;It ships tomorrow.;Dunno.
Thanks;You're welcome!;Bye.
###;;
Price?;It costs 5 EUR.;Expensive.
"""


def pref(**values) -> PrepareOptions:
    return assemble({"format": "preference", "valid_ratio": 0.0, **values})


def lines(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text(encoding="utf-8").splitlines()]


def pair(messages: list, preferred: str, rejected: str | None = "No.") -> dict:
    record = {
        "input": {"messages": messages},
        "preferred_output": [{"role": "assistant", "content": preferred}],
    }
    if rejected is not None:
        record["non_preferred_output"] = [{"role": "assistant", "content": rejected}]
    return record


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- prepare ---------------------------------------------------------------------------------------


def test_each_reply_becomes_a_pair_with_chats_context(tmp_path, write):
    report = prepare(write(SHEET), tmp_path, pref(context=2, system="Be kind."))
    assert report.format == "preference" and report.examples == 4 and report.supervised == 0
    first, second, third, fourth = lines(tmp_path / "conversations.train.jsonl")
    assert first == pair([{"role": "system", "content": "Be kind."}, *user("Hi")],
                         "Hello! How can I help?", "What.")  # fmt: skip
    # the history holds the preferred replies, never a weight; --context 2 is chat's window
    assert second["input"]["messages"][1:] == [
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Where is my order?"},
    ]
    assert [m["content"] for m in third["input"]["messages"]] == [
        "Be kind.", "It ships tomorrow.", "Thanks"]  # fmt: skip
    assert fourth["input"]["messages"][1:] == user("Price?")  # a new conversation starts afresh
    assert read_pairs(tmp_path / "conversations.train.jsonl")[1].rejected == "Dunno."


def test_context_0_keeps_the_message_a_pair_answers(tmp_path, write):
    prepare(write(SHEET), tmp_path, pref(context=0))
    assert all(len(p.messages) == 1 and p.messages[0]["role"] == "user"
               for p in read_pairs(tmp_path / "conversations.train.jsonl"))  # fmt: skip


def test_a_rejected_column_named_anywhere_after_the_actors(tmp_path, write):
    src = write("Human;AI;;Worse\nHi;Hello!;;Go away.\n")
    prepare(src, tmp_path, pref(rejected_column="worse"))  # the header's own case differs
    (only,) = read_pairs(tmp_path / "conversations.train.jsonl")
    assert (only.preferred, only.rejected) == ("Hello!", "Go away.")
    with pytest.raises(InputError, match=r"no column is named 'Nope'.*'Human', 'AI', 'Worse'"):
        prepare(src, tmp_path / "x", pref(rejected_column="Nope"))
    with pytest.raises(InputError, match="an actor's column"):
        prepare(src, tmp_path / "y", pref(rejected_column="AI"))


@pytest.mark.parametrize(
    ("sheet", "line", "words"),
    [
        ("Human;AI;Rejected\nHi;Hello!;Nope.\nAnd?;Sure.;\n", 3, "no rejected reply beside"),
        ("Human;AI;Rejected\nHi;Hello!;Hello!\n", 2, "the same as the reply"),
        ("Human;AI;Rejected\nHi;;Nope.\n", 2, "a rejected reply with no reply beside it"),
        ("Human;AI;Rejected\nHi;Hello!;Nope.\n;Anything else?;Bye.\n", 3, "no message before it"),
        ("Human;AI;Rejected\nHi;Hello!;a ### b\n", 2, "the separator '###' appears inside"),
        ("Human;AI;Rejected\nHi;Hello!;Nope.;Extra\n", 2, "outside the actors' and the rejected"),
        ("Human;AI\nHi;Hello!\n", 1, "names no column of rejected replies"),
    ],
)
def test_a_row_that_cannot_be_a_pair_is_an_error_with_its_line(tmp_path, write, sheet, line, words):
    with pytest.raises(InputError, match=words) as caught:
        prepare(write(sheet), tmp_path / "out", pref())
    assert caught.value.line == line
    assert not (tmp_path / "out" / "conversations.train.jsonl").exists()


def test_allow_sft_rows_writes_replies_without_a_rejected_one_and_counts_them(tmp_path, write):
    src = write("Human;AI;Rejected\nHi;Hello!;Nope.\nAnd?;Sure.;\n###;;\nYo;Hey.;\n")
    report = prepare(src, tmp_path, pref(allow_sft_rows=True))
    assert report.supervised == 2 and report.examples == 3
    supervised = next(f for f in report.findings if f.code == "supervised_rows")
    assert supervised.level == "warning" and supervised.lines == [3, 5]
    records = lines(tmp_path / "conversations.train.jsonl")
    assert ["non_preferred_output" in r for r in records] == [True, False, False]
    # a sheet of two columns too: every row supervised
    two = write("Human;AI\nHi;Hello!\n", name="two.csv")
    assert prepare(two, tmp_path, pref(allow_sft_rows=True)).supervised == 1


def test_options_that_make_no_sense_with_pairs_are_refused():
    with pytest.raises(OptionError, match="use --layout turn"):
        ExampleOptions(format="preference", layout="conversation")
    with pytest.raises(OptionError, match="--allow-sft-rows applies to --format preference"):
        assemble({"allow_sft_rows": True})


def test_other_formats_refuse_a_third_column_and_say_which_format_reads_it(tmp_path, write):
    src = write(SHEET)
    with pytest.raises(InputError, match="3 non-empty columns") as caught:
        prepare(src, tmp_path / "a", PrepareOptions())
    assert "--format preference" in caught.value.hint
    rows = write("Human;AI\nHi;Hello!;Nope.\n", name="rows.csv")
    with pytest.raises(InputError, match="give --format preference"):
        prepare(rows, tmp_path / "b", PrepareOptions())
    # naming the column reads it: a chat file of the preferred replies, and a warning
    report = prepare(src, tmp_path / "c", assemble({"rejected_column": "Rejected"}))
    assert report.examples == 4 and "rejected_not_written" in {f.code for f in report.findings}
    assert "Nope" not in (tmp_path / "c" / "conversations.train.jsonl").read_text()


def test_tokens_count_the_input_and_both_replies(tmp_path, write):
    report = prepare(write("Human;AI;Rejected\nHi;Hello there!;Go.\n"), tmp_path, pref())
    counter = OpenAICounter("o200k_base")
    messages = [*user("Hi"), {"role": "assistant", "content": "Hello there!"},
                {"role": "assistant", "content": "Go."}]  # fmt: skip
    assert report.train.tokens.total == counter.count_messages(messages)


def test_an_xlsx_sheet_with_a_rejected_column(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    for row in (["Human", "AI", "Rejected"], ["Hi", "Hello!", "Nope."], ["###"]):
        book.active.append(row)
    book.save(tmp_path / "s.xlsx")
    prepare(tmp_path / "s.xlsx", tmp_path, pref())
    assert lines(tmp_path / "s.train.jsonl") == [pair(user("Hi"), "Hello!", "Nope.")]


# -- the bundled example ---------------------------------------------------------------------------


def test_the_example_spreadsheet_gives_pairs_split_by_conversation(tmp_path):
    report = prepare(PREFERENCES, tmp_path, assemble({"format": "preference"}))
    assert report.conversations == 12 and report.examples == report.replies == 22
    assert (report.train_conversations, report.valid_conversations) == (10, 2)
    assert report.supervised == 0 and report.warnings == 0
    train = read_pairs(tmp_path / "preferences.train.jsonl")
    valid = read_pairs(tmp_path / "preferences.valid.jsonl")
    assert len(train) + len(valid) == 22
    firsts = {p.messages[0]["content"] for p in train} & {p.messages[0]["content"] for p in valid}
    assert not firsts  # no conversation on both sides
    for p in train + valid:
        assert p.rejected and p.rejected != p.preferred
        assert len(p.preferred.split()) < 30 and len(p.rejected.split()) < 30
        assert p.messages[-1]["role"] == "user" and len(p.messages) <= 5  # --context 5
    later = [p for p in train + valid if len(p.messages) > 1]
    assert later and all(m["role"] == "assistant" for p in later for m in p.messages[1::2])
    for name in ("train", "valid"):
        checked = check_file(tmp_path / f"preferences.{name}.jsonl", training=name == "train")
        assert checked.format == "preference" and checked.errors == 0


def test_the_cli_prepares_pairs_and_refuses_a_conversation_layout(tmp_path):
    code, said = prepare_in_process(PREFERENCES, "-o", tmp_path, "--format", "preference")
    assert code == 0, said
    assert (tmp_path / "preferences.train.jsonl").exists()
    code, said = prepare_in_process(
        PREFERENCES, "-o", tmp_path / "x", "--format", "preference", "--layout", "conversation"
    )
    assert code != 0 and "use --layout turn" in said and len(said.strip().splitlines()) == 1


# -- check -----------------------------------------------------------------------------------------


def test_check_takes_a_valid_pair_file_with_its_tokens(tmp_path):
    rows = [pair(user(f"question {i}"), f"a good answer {i}", f"bad {i}") for i in range(60)]
    report = check_file(write_jsonl(tmp_path / "p.jsonl", rows))
    assert report.format == "preference" and report.errors == 0 and report.warnings == 0
    counter = OpenAICounter("o200k_base")
    first = rows[0]
    both = first["input"]["messages"] + first["preferred_output"] + first["non_preferred_output"]
    assert report.tokens.min <= counter.count_messages(both) <= report.tokens.max
    assert report.examples == 60 and report.billed_tokens


@pytest.mark.parametrize(
    ("line", "code", "words"),
    [
        ("{not json", "not_json", "not valid JSON"),
        (pair([{"role": "robot", "content": "x"}], "A"), "bad_role", "the role 'robot'"),
        ({"input": {"messages": user("x")}, "non_preferred_output": []}, "missing_preferred_output",
         "no preferred_output"),
        (pair(user("x"), "A", " "), "empty_non_preferred_output", "non_preferred_output is empty"),
        (pair(user("x"), "Same", "Same"), "same_outputs", "the same: nothing to prefer"),
        (pair([*user("x"), {"role": "assistant", "content": "y"}], "A"), "last_not_user",
         "last message must be the user's"),
    ],
)  # fmt: skip
def test_check_names_the_line_of_each_bad_pair(tmp_path, line, code, words):
    rows = [pair(user("ok"), "fine"), line, pair(user("ok 2"), "fine 2")]
    report = check_file(write_jsonl(tmp_path / "p.jsonl", rows))
    found = next(f for f in report.findings if f.code == code)
    assert found.level == "error" and found.lines == [2] and report.errors == 1
    assert words in found.message + (found.example or "")
    assert report.format == "preference" and report.examples == 2


def test_check_warns_of_supervised_rows_and_refuses_mixed_formats(tmp_path):
    chat = {"messages": [*user("x"), {"role": "assistant", "content": "y"}]}
    rows = [pair(user("a"), "b"), pair(user("c"), "d", None), chat]
    report = check_file(write_jsonl(tmp_path / "p.jsonl", rows))
    supervised = next(f for f in report.findings if f.code == "supervised_row")
    assert supervised.level == "warning" and supervised.lines == [2]
    assert "OpenAI refuses" in supervised.message and "supervised" in supervised.message
    mixed = next(f for f in report.findings if f.code == "mixed_formats")
    assert mixed.lines == [3] and "a chat line in a preference file" in mixed.message


def test_convtune_check_exits_0_on_pairs_and_1_on_a_bad_one(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [pair(user("a"), "b")])
    result = run_convtune("check", good)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "preference" in result.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair(user("a"), "b", "b")])
    result = run_convtune("check", bad, "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (error,) = [f for f in json.loads(result.stdout)["findings"] if f["level"] == "error"]
    assert error["code"] == "same_outputs" and error["lines"] == [1]
