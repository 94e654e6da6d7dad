"""`convtune check` through the real console script: exit codes, output, JSON, errors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

CONVTUNE = ROOT / ".venv" / "bin" / "convtune"


def convtune(*args, cwd=None) -> subprocess.CompletedProcess:
    exe = str(CONVTUNE) if CONVTUNE.exists() else "convtune"
    return subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.fixture
def clean(tmp_path) -> Path:
    return write_jsonl(tmp_path / "clean.jsonl", [chat(f"q{i}", f"a{i}") for i in range(60)])


@pytest.fixture
def broken(tmp_path) -> Path:
    rows = [
        chat("q0", "a0"),
        "",
        chat("q1", "a1"),
        "{oops",  # line 4
        chat("q2", "a2"),
        chat("q3", "a3"),
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        chat("q4", "a4"),
    ]
    return write_jsonl(tmp_path / "broken.jsonl", rows)


def test_clean_file_exits_0(clean):
    result = convtune("check", clean)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no errors" in result.stdout
    assert "chat" in result.stdout
    assert "60" in result.stdout
    assert "o200k_base" in result.stdout
    assert result.stderr == ""


def test_errors_exit_1_and_show_line_numbers(broken):
    result = convtune("check", broken)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = result.stdout.splitlines()
    json_row = next(r for r in rows if "not valid JSON" in r)
    role_row = next(r for r in rows if "a role outside" in r)
    assert json_row.startswith("error") and re.search(r"\b4\s*$", json_row)
    assert role_row.startswith("error") and re.search(r"\b7\s*$", role_row)
    assert "'robot'" in role_row
    assert "2 errors: fix them before training." in result.stdout
    assert "Traceback" not in result.stderr


def test_json_errors_say_the_column(broken):
    data = json.loads(convtune("check", broken, "--json").stdout)
    by_code = {f["code"]: f for f in data["findings"]}
    assert (
        by_code["not_json"]["example"] == "Expecting property name enclosed in double quotes"
        " at column 2"
    )


def test_cr_line_endings_exit_1_with_the_fix(tmp_path):
    mac = tmp_path / "mac.jsonl"
    mac.write_bytes("".join(json.dumps(chat(f"q{i}", f"a{i}")) + "\r" for i in range(3)).encode())
    result = convtune("check", mac)
    assert result.returncode == 1, result.stdout + result.stderr
    row = next(r for r in result.stdout.splitlines() if "CR alone" in r)
    assert row.startswith("error") and re.search(r"\b1\s*$", row)
    assert "old Mac line endings" in result.stdout and "LF or CRLF" in result.stdout
    assert "Extra data" not in result.stdout and "Traceback" not in result.stderr
    data = json.loads(convtune("check", mac, "--json").stdout)
    assert [(f["code"], f["lines"]) for f in data["findings"]] == [("cr_line_endings", [1])]


def test_warnings_only_exit_0(tmp_path):
    path = write_jsonl(tmp_path / "few.jsonl", [chat("q", "a"), chat("q", "a")])
    result = convtune("check", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no errors, 2 warnings" in result.stdout  # duplicates, too few
    dup = next(r for r in result.stdout.splitlines() if "duplicate" in r)
    assert dup.startswith("warning") and re.search(r"\b2\s*$", dup)


def test_counts_of_one_are_singular(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [chat("q", "a")])
    result = convtune("check", one)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no errors, 1 warning\n" in result.stdout  # fewer than 10 examples
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("q", "a"), "{oops"])
    result = convtune("check", bad)
    assert result.returncode == 1
    assert "1 error: fix it before training." in result.stdout
    assert "(s)" not in result.stdout


def test_json_output(broken):
    result = convtune("check", broken, "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["errors"] == 2
    assert data["warnings"] == 1  # few examples
    assert data["format"] == "chat"
    assert data["examples"] == 5
    by_code = {f["code"]: f for f in data["findings"]}
    assert by_code["not_json"]["lines"] == [4]
    assert by_code["bad_role"]["lines"] == [7]


def test_json_output_of_a_clean_file_with_options(clean):
    result = convtune(
        "check",
        clean,
        "--json",
        "--model",
        "gpt-4.1-mini",
        "--price-per-1m",
        "5",
        "--max-tokens",
        "100",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["errors"] == 0 and data["warnings"] == 0
    assert data["model"] == "gpt-4.1-mini"
    assert data["context_limit"] == 100
    assert data["price_per_1m"] == 5
    assert data["epochs"] == 3
    assert data["billed_tokens"] == data["tokens"]["total"] * 3
    assert data["cost"] == round(data["billed_tokens"] * 5 / 1e6, 4)


def test_validation_flag(tmp_path):
    path = write_jsonl(tmp_path / "valid.jsonl", [chat("q", "a")])
    data = json.loads(convtune("check", path, "--validation", "--json").stdout)
    assert data["warnings"] == 0
    assert data["epochs"] is None and data["cost"] is None


def test_missing_file_one_line_error(tmp_path):
    result = convtune("check", tmp_path / "nope.jsonl")
    assert result.returncode == 1
    assert result.stderr.startswith("convtune: error:")
    assert "nope.jsonl" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unknown_model_one_line_error(clean):
    result = convtune("check", clean, "--model", "no-such-model")
    assert result.returncode == 1
    assert result.stderr.startswith("convtune: error:")
    assert "no-such-model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_empty_file_exits_1(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    result = convtune("check", path, "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["errors"] == 1
    assert [f["code"] for f in data["findings"] if f["level"] == "error"] == ["empty_file"]


def test_help_shows_an_example():
    result = convtune("check", "--help")
    assert result.returncode == 0
    assert "Usage: convtune check" in result.stdout
    assert "Examples:" in result.stdout
    assert re.search(r"^\s+convtune check \S+\.jsonl", result.stdout, re.M)
    assert result.stderr == ""


def test_deeply_nested_line_is_reported(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(chat("q", "a")) + "\n" + "[" * 100_000 + "\n")
    result = convtune("check", path, "--json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["findings"][0]["lines"] == [2]


def test_folder_one_line_error(tmp_path):
    result = convtune("check", tmp_path)
    assert result.returncode in (1, 2)
    assert "internal error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_negative_max_tokens_is_refused(clean):
    result = convtune("check", clean, "--max-tokens", "-5", "--json")
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
