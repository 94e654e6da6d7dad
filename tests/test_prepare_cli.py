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
