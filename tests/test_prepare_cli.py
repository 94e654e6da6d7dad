"""`convtune prepare` through the real console script: exit codes, messages, files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import EXAMPLE, ROOT, SEED_SHEET

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")


def convtune(*args, cwd=None) -> subprocess.CompletedProcess:
    exe = CONVTUNE if Path(CONVTUNE).exists() else "convtune"
    return subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_prepare_then_check(tmp_path):
    result = convtune("prepare", EXAMPLE, "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "conversations" in result.stdout
    assert "training cost" in result.stdout
    train = tmp_path / "conversations.train.jsonl"
    checked = convtune("check", train)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no errors" in checked.stdout


def test_prepare_json_report(tmp_path):
    result = convtune("prepare", EXAMPLE, "-o", tmp_path, "--json", "--format", "prompt-completion")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["examples"] == report["replies"]
    assert report["train"]["tokenizer"] == "cl100k_base"
    assert report["format"] == "prompt-completion"


def test_existing_output_needs_force(tmp_path):
    assert convtune("prepare", EXAMPLE, "-o", tmp_path).returncode == 0
    again = convtune("prepare", EXAMPLE, "-o", tmp_path)
    assert again.returncode == 1
    assert again.stderr.startswith("convtune: error: ") and "--force" in again.stderr
    assert "Traceback" not in again.stderr
    assert convtune("prepare", EXAMPLE, "-o", tmp_path, "--force").returncode == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("Human;AI\nhi;a ### b\n", ":2: the separator '###' appears inside a message"),
        ("Human;AI;Narrator\nhi;yes;no\n", ":1: the header row has 3 non-empty columns"),
        (b"Human;AI\nhola;\xbfqu\xe9?\n", "not valid UTF-8 at byte 14"),
    ],
)
def test_bad_input_one_line_error(tmp_path, write, content, expected):
    src = write(content)
    result = convtune("prepare", src, "-o", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(src) in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "conversations.train.jsonl").exists()


def test_encoding_option_reads_cp1252(tmp_path, write):
    src = write("Human;AI\nhola;¿qué?\n", encoding="cp1252")
    result = convtune(
        "prepare", src, "-o", tmp_path / "o", "--encoding", "cp1252", "--valid-ratio", "0"
    )
    assert result.returncode == 0, result.stderr
    line = (tmp_path / "o" / "conversations.train.jsonl").read_text(encoding="utf-8")
    assert "¿qué?" in line


def test_options_reach_the_output(tmp_path, write):
    src = write(SEED_SHEET)
    result = convtune(
        "prepare",
        src,
        "-o",
        tmp_path,
        "--format",
        "prompt-completion",
        "--context",
        "0",
        "--no-stop",
        "--valid-ratio",
        "0",
    )
    assert result.returncode == 0, result.stderr
    first = json.loads((tmp_path / "conversations.train.jsonl").read_text().splitlines()[0])
    assert first == {"prompt": "", "completion": " I'm an AI"}


def test_usage_errors_exit_2(tmp_path):
    result = convtune("prepare", EXAMPLE, "--format", "xml")
    assert result.returncode == 2 and "Invalid value" in result.stderr
    result = convtune("prepare", EXAMPLE, "-o", tmp_path, "--context", "many")
    assert result.returncode == 2 and "'all'" in result.stderr


def test_missing_input(tmp_path):
    result = convtune("prepare", tmp_path / "nope.csv", "-o", tmp_path)
    assert result.returncode == 1 and "no such file" in result.stderr


def test_help_has_examples():
    for args in ([], ["prepare"], ["check"]):
        result = convtune(*args, "--help")
        assert result.returncode == 0
        assert "Examples:" in result.stdout


# -- Nothing to write is an error, not an empty success (in-process: these are quick) -------------


def prepare_in_process(*args) -> tuple[int, str]:
    """`convtune prepare ARGS` through `main()`: (exit code, stdout + stderr)."""
    import contextlib
    import io

    from convtune.cli.main import main

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(["prepare", *map(str, args)])
    return code, sink.getvalue()


def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("Human;AI\n", "no exchanges: nothing after the header row"),
        ("Human;AI\n###;###\n\n###;###\n", "no exchanges: only separator rows"),
        ("Human;AI\nhello?;\nanyone?;\n", "no exchanges: no row has a reply in the 'AI' column"),
        ("", "no exchanges: the file is empty"),
        ('Human;AI\nhi;yes\nHello;"I am\nx;y\n', ":3: a quote opens a cell here and never"),
        ("Human;AI\nhi;yes\nHel\rlo;x\n", ":3: a carriage return (CR) in the middle"),
        (b"Human;AI\nhi;ye\x00s\n", ":2: a NUL character"),
    ],
)
def test_nothing_to_write_exits_1_and_writes_nothing(tmp_path, write, content, expected):
    src = write(content)
    code, output = prepare_in_process(src, "-o", tmp_path / "out")
    assert code == 1
    assert output.startswith(f"convtune: error: {src}") and expected in output
    assert output.count("\n") == 1, output
    assert written(tmp_path / "out") == []


def test_xlsx_with_an_empty_sheet_exits_1(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    src = tmp_path / "empty.xlsx"
    openpyxl.Workbook().save(src)
    code, output = prepare_in_process(src, "-o", tmp_path / "out")
    assert code == 1 and "no exchanges: the file is empty" in output
    assert written(tmp_path / "out") == []


def test_every_example_dropped_is_an_error(tmp_path, write):
    code, output = prepare_in_process(write(SEED_SHEET), "-o", tmp_path / "out", "--max-tokens", 3)
    assert code == 1
    assert "no examples: all 7 examples are longer than 3 tokens and dropped" in output
    assert "--overlong truncate" in output
    assert written(tmp_path / "out") == []


def test_one_conversation_writes_no_empty_validation_file(tmp_path, write):
    src = write("Human;AI\nhi;hello\nhow are you?;fine\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "conversations.valid.jsonl").write_text('{"stale": true}\n')
    code, output = prepare_in_process(src, "-o", out, "--json", "--force")
    assert code == 0, output
    report = json.loads(output)
    assert written(out) == ["conversations.train.jsonl"]  # the stale file is gone too
    assert report["outputs"] == [str(out / "conversations.train.jsonl")]
    assert report["valid"] is None and report["examples"] == 2
    [warning] = [f for f in report["findings"] if f["code"] == "no_validation_examples"]
    assert "no validation file written" in warning["message"]
    assert warning["example"] == "removed the earlier conversations.valid.jsonl"


@pytest.mark.parametrize(("seed", "outcome"), [(0, "error"), (1, "no validation file")])
def test_a_split_that_leaves_one_side_empty(tmp_path, write, seed, outcome):
    # two conversations, one of them without a reply: which side gets it depends on the seed
    src = write("Human;AI\nhello?;\n###;###\nhi;there\n")
    out = tmp_path / "out"
    code, output = prepare_in_process(src, "-o", out, "--valid-ratio", 0.5, "--seed", seed)
    if outcome == "error":
        assert (
            code == 1 and "no training examples: the one example went to the validation" in output
        )
        assert written(out) == []
    else:
        assert code == 0 and written(out) == ["conversations.train.jsonl"]
        assert "no validation file written" in output


def test_the_flags_defaults_are_the_librarys():
    """One place says each default (the library's dataclasses); the CLI and the web page read
    them there, so `convtune prepare` with no option is `prepare(path, out)`."""
    from convtune import PrepareOptions
    from convtune.cli.prepare_cmd import prepare as command
    from convtune.dataset.prepare_options import assemble
    from convtune.server.prepare_body import PrepareBody

    defaults = {
        p.name: p.default
        for p in command.params
        if p.name not in ("input_path", "out_dir", "as_json")
    }
    options = PrepareOptions()
    assert defaults["context"] == str(options.examples.context)  # the flag's text, made a number
    defaults["context"] = int(defaults["context"])
    assert assemble(defaults) == options  # every flag's default, as the library has it
    page = PrepareBody().model_dump(exclude={"save"})
    assert assemble(page) == options  # the page's request with no option, too


def test_multiline_cells_that_hold_and_end_with_the_delimiter_are_read_exactly(tmp_path):
    """tests/data/multiline_cells.csv: valid CSV (RFC 4180) as pandas and Google Sheets write it,
    with quoted cells that span lines, hold commas and end with one. Read cell for cell, with at
    most a warning; never refused."""
    from .conftest import data

    result = convtune(
        "prepare", data("multiline_cells.csv"), "-o", tmp_path, "--valid-ratio", "0",
        "--layout", "conversation", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["conversations"] == 2 and report["examples"] == 2
    assert not [f for f in report["findings"] if f["level"] == "error"]
    warned = {f["code"]: f["lines"] for f in report["findings"] if f["level"] == "warning"}
    assert warned["multiline_cell_with_delimiter"] == [2, 3, 8]  # line 5 has no later comma
    lines = (tmp_path / "multiline_cells.train.jsonl").read_text(encoding="utf-8").splitlines()
    first, second = (json.loads(line)["messages"] for line in lines)
    assert first[0]["content"] == (
        "Have you seen the new lighthouse documentary? The keeper's log is the best part.\n"
        "Also, the storm scenes were filmed on the real island, with the real crew,"
    )
    assert first[3]["content"] == 'The last one, by far. The "quiet week" chapter, mostly.'
    assert [m["content"] for m in second] == [
        "Can you recommend a book, something calm,",
        'Try "The Salt Road".\nIt is slow, gentle, and, in places, very funny,',
        "Thanks, I'll look for it.",
        "Enjoy it!",
    ]
