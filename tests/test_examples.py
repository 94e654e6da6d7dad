"""The seed's exact rules for the legacy format, and the chat and sharegpt builders."""

from __future__ import annotations

import json

import pytest

from convtune import (
    ExampleBuilder,
    ExampleOptions,
    Findings,
    OptionError,
    PrepareOptions,
    SheetOptions,
    open_sheet,
    prepare,
)

from .conftest import SEED_SHEET

# The seed's own table: context 5, stop on (DESIGN.md gives the 3rd and 7th lines verbatim).
SEED_TABLE = [
    '{"prompt": "Human: Hello\\nAI:", "completion": " I\'m an AI\\nHuman: "}',
    '{"prompt": "Human: Hello\\nAI: I\'m an AI\\nHuman: Open the pod bay doors please\\nAI:", "completion": " No\\nHuman: "}',
    '{"prompt": "Human: Hello\\nAI: I\'m an AI\\nHuman: Open the pod bay doors please\\nAI: No\\nHuman: Open the pod bay doors!\\nAI:", "completion": " Well, if you insist\\nHuman: "}',
    '{"prompt": "Human: Good morning\\nAI:", "completion": " Hey\\nHuman: "}',
    '{"prompt": "Human: Good morning\\nAI: Hey\\nHuman: Can you read me the news?\\nAI:", "completion": " No, I can\'t\\nHuman: "}',
    '{"prompt": "Human: Good morning\\nAI: Hey\\nHuman: Can you read me the news?\\nAI: No, I can\'t\\nHuman: Is there something you can do?\\nAI:", "completion": " You should know\\nHuman: "}',
    '{"prompt": "Human: Can you read me the news?\\nAI: No, I can\'t\\nHuman: Is there something you can do?\\nAI: You should know\\nHuman: Oh okey\\nAI:", "completion": " Yeah\\nHuman: "}',
]


def conversations(path, **kw):
    findings = Findings()
    sheet = open_sheet(path, SheetOptions(**kw), findings)
    return sheet.actors, list(sheet.conversations), findings


def build(path, **options):
    actors, convs, _ = conversations(path)
    builder = ExampleBuilder(actors, ExampleOptions(**options))
    return [e.record for c in convs for e in builder.examples(c)]


def prepared_lines(tmp_path, path, **options) -> list[str]:
    report = prepare(
        path,
        tmp_path / "out",
        PrepareOptions(examples=ExampleOptions(**options), valid_ratio=0, force=True),
    )
    return (tmp_path / "out" / f"{path.stem}.train.jsonl").read_text(
        encoding="utf-8"
    ).splitlines(), report


def test_seed_table_byte_for_byte(tmp_path, write):
    lines, report = prepared_lines(tmp_path, write(SEED_SHEET), format="prompt-completion")
    assert lines == SEED_TABLE
    assert report.examples == report.replies == 7


def test_seed_without_stop(tmp_path, write):
    lines, _ = prepared_lines(tmp_path, write(SEED_SHEET), format="prompt-completion", stop=False)
    assert json.loads(lines[-1])["completion"] == " Yeah"
    assert all(not json.loads(line)["completion"].endswith("Human: ") for line in lines)


def test_voice_data_has_empty_prompts(write):
    records = build(write(SEED_SHEET), format="prompt-completion", context=0)
    assert [r["prompt"] for r in records] == [""] * 7
    assert records[2]["completion"] == " Well, if you insist\nHuman: "


@pytest.mark.parametrize("context", [1, 2, 3])
def test_context_counts_messages_of_both_actors(write, context):
    records = build(write(SEED_SHEET), format="prompt-completion", context=context)
    last = records[-1]["prompt"].split("\n")
    assert len(last) == context + 1 and last[-1] == "AI:"
    assert last[-2] == "Human: Oh okey"


def test_context_never_crosses_a_separator(write):
    records = build(write(SEED_SHEET), format="prompt-completion", context=None)
    assert records[3]["prompt"] == "Human: Good morning\nAI:"


def test_chat_turn_layout_weights_context_replies(write):
    records = build(write(SEED_SHEET), system="Be HAL.")
    assert len(records) == 7
    third = records[2]["messages"]
    assert third == [
        {"role": "system", "content": "Be HAL."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "I'm an AI", "weight": 0},
        {"role": "user", "content": "Open the pod bay doors please"},
        {"role": "assistant", "content": "No", "weight": 0},
        {"role": "user", "content": "Open the pod bay doors!"},
        {"role": "assistant", "content": "Well, if you insist"},
    ]
    # context 5: the last example holds 5 messages before the reply, and no system without --system
    assert len(build(write(SEED_SHEET))[-1]["messages"]) == 6


def test_chat_context_all_keeps_whole_history(write):
    records = build(write(SEED_SHEET), context=None)
    assert len(records[-1]["messages"]) == 8


def test_conversation_layout_trains_every_reply_once(write):
    records = build(write(SEED_SHEET), layout="conversation")
    assert len(records) == 2
    messages = records[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4
    assert all("weight" not in m for m in messages)


def test_sharegpt_joins_consecutive_turns(write):
    path = write("User;Bot\nhi;\nanyone there?;yes\n;still here\nok;bye\n")
    records = build(path, format="sharegpt", layout="conversation", system="S")
    turns = records[0]["conversations"]
    assert turns == [
        {"from": "system", "value": "S"},
        {"from": "human", "value": "hi\nanyone there?"},
        {"from": "gpt", "value": "yes\nstill here"},
        {"from": "human", "value": "ok"},
        {"from": "gpt", "value": "bye"},
    ]


def test_reply_first_prompt_is_the_label(write):
    records = build(
        write("Human;AI\n;Welcome!\nthanks;You're welcome\n"), format="prompt-completion"
    )
    assert records[0] == {"prompt": "AI:", "completion": " Welcome!\nHuman: "}
    assert records[1]["prompt"] == "AI: Welcome!\nHuman: thanks\nAI:"


@pytest.mark.parametrize(
    "options",
    [
        {"format": "xml"},
        {"layout": "tree"},
        {"context": -1},
        {"format": "prompt-completion", "layout": "conversation"},
        {"format": "prompt-completion", "system": "x"},
    ],
)
def test_bad_options_are_errors(options):
    with pytest.raises(OptionError):
        ExampleOptions(**options)
