"""prepare end to end: split, determinism, atomic writes, limits, real data."""

from __future__ import annotations

import json

import pytest

from convtune import ExampleOptions, InputError, OutputExistsError, PrepareOptions, prepare
from convtune.dataset.split import split_stream

from .conftest import EXAMPLE, SEED_SHEET, data


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def run(src, out, **kw):
    examples = kw.pop("examples", {})
    return prepare(src, out, PrepareOptions(examples=ExampleOptions(**examples), **kw))


def test_bundled_example_nothing_lost(tmp_path):
    report = run(EXAMPLE, tmp_path)
    train, valid = tmp_path / "conversations.train.jsonl", tmp_path / "conversations.valid.jsonl"
    assert report.outputs == [str(train), str(valid)]
    assert report.conversations >= 30
    assert len(lines(train)) + len(lines(valid)) == report.examples == report.replies
    assert report.train.examples == len(lines(train))
    assert report.valid_conversations == round(report.conversations * 0.2)
    for line in lines(train) + lines(valid):
        record = json.loads(line)
        assert record["messages"][-1]["role"] == "assistant"


def test_split_never_puts_a_conversation_on_both_sides(tmp_path):
    run(EXAMPLE, tmp_path, examples={"context": None})
    first_user = {}
    for side in ("train", "valid"):
        for line in lines(tmp_path / f"conversations.{side}.jsonl"):
            opening = json.loads(line)["messages"][0]["content"]
            first_user.setdefault(opening, set()).add(side)
    assert all(len(sides) == 1 for sides in first_user.values())


def test_same_input_same_bytes_and_seed_changes_split(tmp_path):
    run(EXAMPLE, tmp_path / "a")
    run(EXAMPLE, tmp_path / "b")
    run(EXAMPLE, tmp_path / "c", seed=1)
    a = (tmp_path / "a" / "conversations.valid.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "conversations.valid.jsonl").read_bytes()
    assert a != (tmp_path / "c" / "conversations.valid.jsonl").read_bytes()


def test_valid_ratio_zero_writes_no_validation_file(tmp_path):
    report = run(EXAMPLE, tmp_path, valid_ratio=0)
    assert not (tmp_path / "conversations.valid.jsonl").exists()
    assert report.valid is None and report.valid_conversations == 0


def test_existing_output_is_kept_without_force(tmp_path):
    run(EXAMPLE, tmp_path)
    before = (tmp_path / "conversations.train.jsonl").read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        run(EXAMPLE, tmp_path, examples={"format": "sharegpt"})
    assert (tmp_path / "conversations.train.jsonl").read_bytes() == before
    run(EXAMPLE, tmp_path, examples={"format": "sharegpt"}, force=True)
    assert (tmp_path / "conversations.train.jsonl").read_bytes() != before


def test_input_errors_write_nothing(tmp_path, write):
    src = write("Human;AI\nhi;yes\n###;###\nbad;has ### inside\nok;fine\nworse;### again\n")
    with pytest.raises(InputError) as err:
        run(src, tmp_path / "out")
    assert f"{src}:4:" in str(err.value) and "and 1 more error" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_split_stream_exact_ratio_and_small_sets():
    for n in (2, 3, 10, 99, 100, 101, 250, 1000):
        flags = [v for _, v in split_stream(range(n), 0.2, seed=3)]
        assert len(flags) == n
        assert sum(flags) == max(1, int(n * 0.2 + 0.5))
        assert not all(flags)
    assert [v for _, v in split_stream(range(5), 0)] == [False] * 5


def test_max_tokens_drop_and_truncate(tmp_path):
    report = run(EXAMPLE, tmp_path / "d", max_tokens=80, valid_ratio=0)
    assert report.dropped > 0
    assert report.examples == report.replies - report.dropped
    assert any(f.code == "dropped_too_long" and f.count == report.dropped for f in report.findings)
    assert report.train.tokens.max <= 80
    report = run(EXAMPLE, tmp_path / "t", max_tokens=80, valid_ratio=0, overlong="truncate")
    assert report.truncated > 0
    assert report.examples + report.dropped == report.replies
    assert report.train.tokens.max <= 80


def test_seed_prompt_completion_with_voice_and_report(tmp_path, write):
    report = run(
        write(SEED_SHEET),
        tmp_path,
        valid_ratio=0,
        examples={"format": "prompt-completion", "context": 0},
    )
    records = [json.loads(line) for line in lines(tmp_path / "conversations.train.jsonl")]
    assert {r["prompt"] for r in records} == {""}
    assert report.train.model == "davinci-002"
    assert report.train.tokenizer == "cl100k_base"
    assert any(f.code == "few_examples" for f in report.train.findings)


def test_delimiter_inside_a_message_warns_in_legacy_format(tmp_path, write):
    report = run(
        write("Human;AI\nhi;Human: is what you are\n"),
        tmp_path,
        valid_ratio=0,
        examples={"format": "prompt-completion"},
    )
    assert [f.lines for f in report.findings if f.code == "delimiter_in_message"] == [[2]]


def test_duplicates_are_reported_with_input_lines(tmp_path, write):
    report = run(write("Human;AI\nhi;hello\n###;###\nhi;hello\n"), tmp_path, valid_ratio=0)
    dup = [f for f in report.train.findings if f.code == "duplicate"]
    assert dup and dup[0].lines == [4]


@pytest.mark.parametrize(
    ("name", "actors", "conversations", "replies"),
    [
        ("sgd_taskoriented_small.csv", ("User", "Assistant"), 200, None),
        ("tm4_coffee_small.csv", ("Customer", "Agent"), 200, None),
    ],
)
def test_real_files(tmp_path, name, actors, conversations, replies):
    src = data(name)
    for fmt in ("chat", "prompt-completion", "sharegpt"):
        report = run(src, tmp_path / fmt, examples={"format": fmt})
        assert report.actors == actors
        assert report.conversations == conversations
        assert report.examples == report.replies > 0
        written = sum(len(lines(tmp_path / fmt / p.split("/")[-1])) for p in report.outputs)
        assert written == report.examples
        assert not [f for f in report.findings if f.level == "error"]


def test_real_file_prompt_completion_matches_the_floor(tmp_path):
    """The legacy output equals the benchmark's floor implementation, byte for byte."""
    import subprocess
    import sys

    from .conftest import ROOT

    src = data("sgd_taskoriented_small.csv")
    run(src, tmp_path, valid_ratio=0, examples={"format": "prompt-completion"})
    floor = tmp_path / "floor.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "floor.py"), str(src), str(floor)], check=True
    )
    assert (tmp_path / "sgd_taskoriented_small.train.jsonl").read_bytes() == floor.read_bytes()


@pytest.mark.parametrize("fmt", ["prompt-completion", "chat"])
def test_counting_process_gives_the_same_report(tmp_path, monkeypatch, fmt):
    """Large inputs count tokens in a child process; the figures must not change."""
    from convtune.dataset import pipeline

    src = data("sgd_taskoriented_small.csv")
    serial = run(
        src,
        tmp_path / "s",
        examples={"format": fmt, "stop": False} if fmt == "prompt-completion" else {"format": fmt},
    )
    monkeypatch.setattr(pipeline, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(pipeline, "BATCH", 7)
    parallel = run(
        src,
        tmp_path / "p",
        examples={"format": fmt, "stop": False} if fmt == "prompt-completion" else {"format": fmt},
    )
    assert parallel.train.to_dict() | {"path": ""} == serial.train.to_dict() | {"path": ""}
    assert parallel.valid.histogram == serial.valid.histogram
    for name in ("train", "valid"):
        a = (tmp_path / "s" / f"sgd_taskoriented_small.{name}.jsonl").read_bytes()
        assert a == (tmp_path / "p" / f"sgd_taskoriented_small.{name}.jsonl").read_bytes()


def test_tokens_match_check_on_the_written_file(tmp_path):
    """prepare's per-message sums equal check's whole-example counts of the same file."""
    from convtune import check_file

    src = data("tm4_coffee_small.csv")
    for fmt in ("prompt-completion", "chat"):
        report = run(src, tmp_path / fmt, valid_ratio=0, examples={"format": fmt})
        checked = check_file(report.outputs[0])
        assert checked.tokens == report.train.tokens
        assert checked.histogram == report.train.histogram
