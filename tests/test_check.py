"""`convtune.dataset.check.check_file` on real JSONL files: formats, every rule with its line, tokens, cost.

Token counts are checked against an independent count: `bpe_openai`'s own encoder and the
formula of OpenAI's cookbook, not convtune's tokenizer code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import bpe_openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convtune.dataset.check import check_file
from convtune.dataset.modelinfo import default_epochs
from convtune.errors import InputError, OptionError

# -- Helpers -------------------------------------------------------------------------------------


def write_jsonl(directory: Path, rows: list, name: str = "data.jsonl") -> Path:
    """A JSONL file: dicts and lists are dumped as JSON, strings are written as they are."""
    path = directory / name
    text = "".join(
        (row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n"
        for row in rows
    )
    path.write_bytes(text.encode("utf-8"))
    return path


def find(report, code: str) -> dict | None:
    matches = [f for f in report.findings if f.code == code]
    assert len(matches) <= 1, f"{code} appears twice in {report.findings}"
    return matches[0] if matches else None


def codes(report, level: str | None = None) -> set[str]:
    return {f.code for f in report.findings if level is None or f.level == level}


def chat(user: str = "Hi", reply: str = "Hello", **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
        **extra,
    }


def msgs(*messages: dict) -> dict:
    return {"messages": list(messages)}


def user(content="Hi", **kw) -> dict:
    return {"role": "user", "content": content, **kw}


def assistant(content="Hello", **kw) -> dict:
    return {"role": "assistant", "content": content, **kw}


def system(content="Be brief.", **kw) -> dict:
    return {"role": "system", "content": content, **kw}


def pc(prompt: str = "Human: hi\nAI:", completion: str = " hello\nHuman: ") -> dict:
    return {"prompt": prompt, "completion": completion}


def sharegpt(*turns: tuple[str, str], **extra) -> dict:
    turns = turns or (("human", "Hi"), ("gpt", "Hello"))
    return {"conversations": [{"from": f, "value": v} for f, v in turns], **extra}


def distinct_chats(n: int) -> list[dict]:
    return [chat(f"Question number {i}", f"Answer number {i}") for i in range(n)]


def check_rows(tmp_path, rows, **kw):
    return check_file(write_jsonl(tmp_path, rows), **kw)


def assert_error(report, code: str, lines: list[int], count: int | None = None) -> dict:
    f = find(report, code)
    assert f is not None, f"no {code} in {report.findings}"
    assert f.level == "error"
    assert f.lines == lines
    assert f.count == (len(lines) if count is None else count)
    return f


@pytest.fixture(scope="module")
def o200k():
    return bpe_openai.get_encoding("o200k_base")


@pytest.fixture(scope="module")
def cl100k():
    return bpe_openai.get_encoding("cl100k_base")


def cookbook_tokens(messages: list[dict], enc) -> int:
    """OpenAI cookbook's num_tokens_from_messages for fine-tuning data (weight left out)."""
    total = 0
    for m in messages:
        total += 3
        for key, value in m.items():
            if key == "weight":
                continue
            total += len(enc.encode(value))
            if key == "name":
                total += 1
    return total + 3


# -- Format detection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "fmt", "tokenizer", "model"),
    [
        (chat(), "chat", "o200k_base", "gpt-4o-mini-2024-07-18"),
        (pc(), "prompt-completion", "cl100k_base", "davinci-002"),
        (sharegpt(), "sharegpt", "o200k_base", "gpt-4o-mini-2024-07-18"),
    ],
)
def test_format_detected_with_its_default_model(tmp_path, row, fmt, tokenizer, model):
    report = check_rows(tmp_path, [row])
    assert report.format == fmt
    assert report.examples == 1
    assert report.model == model
    assert report.tokenizer == tokenizer
    assert report.errors == 0, report.findings
    assert report.path == str(tmp_path / "data.jsonl")


def test_clean_files_of_each_format_have_no_findings(tmp_path):
    rows = {
        "chat.jsonl": distinct_chats(60),
        "pc.jsonl": [pc(f"Human: q{i}\nAI:", f" a{i}\nHuman: ") for i in range(60)],
        "sg.jsonl": [sharegpt(("human", f"q{i}"), ("gpt", f"a{i}")) for i in range(60)],
    }
    for name, data in rows.items():
        report = check_file(write_jsonl(tmp_path, data, name))
        assert report.findings == [], (name, report.findings)
        assert report.examples == 60
        assert report.errors == report.warnings == 0


def test_mixed_formats_reported_on_the_other_lines(tmp_path):
    rows = [chat(), chat("a", "b"), pc(), chat("c", "d"), sharegpt(), pc(" x", " y")]
    report = check_rows(tmp_path, rows)
    assert report.format == "chat"
    f = assert_error(report, "mixed_formats", [3, 5, 6])
    assert "line 1" in f.message
    assert report.examples == 3  # lines in another format are not examples


def test_format_comes_from_the_first_line_with_a_known_format(tmp_path):
    rows = ["not json", {"foo": 1}, pc(), chat()]
    report = check_rows(tmp_path, rows)
    assert report.format == "prompt-completion"
    f = assert_error(report, "mixed_formats", [4])
    assert "a chat line in a prompt-completion file (from line 3)" in f.message


# -- Errors, each with its line ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["{not json", '{"messages": [}', "messages", "{'a': 1}"])
def test_not_json(tmp_path, bad):
    report = check_rows(tmp_path, [chat(), bad, chat("a", "b")])
    f = assert_error(report, "not_json", [2])
    assert f.example  # the parser's own words
    assert report.examples == 2


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (
            '{"messages": [{"role": "user", "content": "hi}]}',
            "Unterminated string starting at column 43",
        ),
        ('{"messages": [}', "Expecting value at column 15"),
        ('{"a": 1} x', "Extra data at column 10"),
    ],
)
def test_not_json_says_the_column(tmp_path, bad, words):
    report = check_rows(tmp_path, [chat(), bad])
    assert assert_error(report, "not_json", [2]).example == words


def test_cr_line_endings_are_named(tmp_path):
    """Old-Mac files (lines ending in CR alone) read as one line: say so, not "Extra data"."""
    path = tmp_path / "mac.jsonl"
    rows = [json.dumps(chat()), json.dumps(chat("a", "b")), json.dumps(chat("c", "d"))]
    path.write_bytes(("\r".join(rows) + "\r").encode())
    report = check_file(path)
    f = assert_error(report, "cr_line_endings", [1])
    assert "lines end in CR alone" in f.message and "LF or CRLF" in f.message
    assert find(report, "not_json") is None
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode())  # CRLF reads as it should
    assert check_file(path).examples == 3
    stray = json.dumps(chat()) + "\n" + '{"messages": "a\rb"}' + "\n"  # a CR inside a line
    path.write_bytes(stray.encode())
    assert (
        "Invalid control character at column"
        in assert_error(check_file(path), "not_json", [2]).example
    )


@pytest.mark.parametrize("bad", ["[1, 2]", '"text"', "42", "null", "true"])
def test_not_object(tmp_path, bad):
    report = check_rows(tmp_path, [chat(), chat("a", "b"), bad])
    assert_error(report, "not_object", [3])


@pytest.mark.parametrize("bad", ["{}", '{"text": "hello"}', '{"input": "a", "output": "b"}'])
def test_unknown_format(tmp_path, bad):
    report = check_rows(tmp_path, [bad, chat()])
    assert_error(report, "unknown_format", [1])
    assert report.format == "chat"


def test_unknown_keys_at_example_and_message_level(tmp_path):
    rows = [
        chat(),
        chat(id=7),
        msgs(user(), assistant(extra="x")),
        chat(tools=[], parallel_tool_calls=False),  # allowed example keys
        msgs(user(name="bob"), assistant(weight=1)),  # allowed message keys
    ]
    report = check_rows(tmp_path, rows)
    f = assert_error(report, "unknown_key_example", [2])
    assert f.example == "'id'"
    f = assert_error(report, "unknown_key_message", [3])
    assert f.example == "'extra'"
    assert report.errors == 2


def test_unknown_keys_in_prompt_completion_and_sharegpt(tmp_path):
    pcr = check_rows(tmp_path, [pc(), {**pc(), "meta": 1}])
    assert_error(pcr, "unknown_key_example", [2])
    rows = [
        sharegpt(system="Be brief."),
        sharegpt(id=3),
        {
            "conversations": [
                {"from": "human", "value": "a", "lang": "en"},
                {"from": "gpt", "value": "b"},
            ]
        },
    ]
    sg = check_rows(tmp_path, rows)
    assert_error(sg, "unknown_key_example", [2])
    assert_error(sg, "unknown_key_turn", [3])


@pytest.mark.parametrize("role", ["tool", "bot", "User", "", None, 1])
def test_bad_role(tmp_path, role):
    rows = [chat(), msgs(system(), {"role": role, "content": "x"}, user(), assistant())]
    report = check_rows(tmp_path, rows)
    f = assert_error(report, "bad_role", [2])
    assert f.example == repr(role)


def test_system_not_first(tmp_path):
    rows = [
        msgs(system(), user(), assistant()),
        msgs(user(), system(), assistant()),
        msgs(user(), assistant(), system()),
    ]
    report = check_rows(tmp_path, rows)
    assert_error(report, "system_not_first", [2, 3])
    assert report.examples == 1


@pytest.mark.parametrize("content", ["", "   ", "\n\t", None, 5, ["a"], {"type": "text"}])
def test_empty_content(tmp_path, content):
    rows = [chat(), chat("other", "reply"), msgs(user(), assistant(content))]
    report = check_rows(tmp_path, rows)
    assert_error(report, "empty_content", [3])


def test_missing_role_content_and_messages(tmp_path):
    rows = [
        chat(),
        msgs({"content": "x"}, assistant()),
        msgs(user(), {"role": "assistant"}),
        {"messages": []},
        {"messages": "hello"},
        msgs("hello", assistant()),
    ]
    report = check_rows(tmp_path, rows)
    assert_error(report, "missing_role", [2])
    assert_error(report, "missing_content", [3])
    assert_error(report, "no_messages", [4, 5])
    assert_error(report, "message_not_object", [6])
    assert report.examples == 1


@pytest.mark.parametrize("weight", [True, False, 0.5, 2, -1, "1", None, [1]])
def test_bad_weight(tmp_path, weight):
    rows = [
        chat(),
        msgs(user(), assistant("a", weight=0), user("b"), assistant("c", weight=weight)),
    ]
    report = check_rows(tmp_path, rows)
    f = assert_error(report, "bad_weight", [2])
    assert f.example == repr(weight)


@pytest.mark.parametrize("weight", [0, 1])
def test_good_weights(tmp_path, weight):
    rows = [msgs(user(), assistant("a", weight=weight), user("b"), assistant("c", weight=1))]
    report = check_rows(tmp_path, rows)
    assert report.errors == 0, report.findings


@pytest.mark.parametrize(
    "example",
    [
        msgs(system(weight=1), user(), assistant()),
        msgs(system(), user(weight=0), assistant()),
        msgs(user(weight=1), assistant()),
    ],
)
def test_weight_not_assistant(tmp_path, example):
    report = check_rows(tmp_path, [chat(), example])
    assert_error(report, "weight_not_assistant", [2])
    assert find(report, "bad_weight") is None


def test_no_assistant_and_nothing_trained(tmp_path):
    rows = [
        chat(),
        msgs(user()),
        msgs(system(), user()),
        msgs(user(), assistant(weight=0)),
        msgs(user(), assistant("a", weight=0), user("b"), assistant("c", weight=0)),
        msgs(user(), assistant("a", weight=0), user("b"), assistant("c")),  # fine
    ]
    report = check_rows(tmp_path, rows)
    assert_error(report, "no_assistant", [2, 3])
    assert_error(report, "nothing_trained", [4, 5])
    assert report.examples == 2


def test_prompt_completion_errors(tmp_path):
    rows = [
        pc(),
        {"prompt": "Human: a\nAI:"},
        {"completion": " b"},
        pc(completion=""),
        pc(completion="   "),
        pc(completion="\n"),
        {"prompt": 3, "completion": " c"},
        {"prompt": "x", "completion": None},
    ]
    report = check_rows(tmp_path, rows)
    assert report.format == "prompt-completion"
    assert_error(report, "missing_completion", [2])
    assert_error(report, "missing_prompt", [3])
    assert_error(report, "empty_completion", [4, 5, 6])
    assert_error(report, "bad_prompt", [7])
    assert_error(report, "bad_completion", [8])
    assert report.examples == 1


def test_sharegpt_errors(tmp_path):
    rows = [
        sharegpt(),
        sharegpt(("user", "Hi"), ("gpt", "Hello")),
        sharegpt(("human", "Hi"), ("assistant", "Hello")),
        sharegpt(("human", "Hi"), ("human", "again")),
        sharegpt(("human", "Hi"), ("gpt", "")),
        sharegpt(("human", "Hi"), ("system", "late"), ("gpt", "Hello")),
        {"conversations": []},
        {"conversations": [["human", "Hi"], {"from": "gpt", "value": "x"}]},
        sharegpt(("system", "first is fine"), ("human", "Hi"), ("gpt", "Hello")),
    ]
    report = check_rows(tmp_path, rows)
    assert report.format == "sharegpt"
    f = assert_error(report, "bad_from", [2, 3])
    assert f.example == "'user'"
    # line 3 has no gpt turn because its reply is from 'assistant'
    assert_error(report, "no_assistant", [3, 4])
    assert_error(report, "empty_content", [5])
    assert_error(report, "system_not_first", [6])
    assert_error(report, "no_conversations", [7])
    assert_error(report, "turn_not_object", [8])
    assert report.examples == 2


def test_blank_lines_skipped_and_line_numbers_kept(tmp_path):
    rows = ["", chat(), "   ", "\t", "not json", "", "", chat("a", "b"), "[1]", ""]
    report = check_rows(tmp_path, rows)
    assert report.examples == 2
    assert_error(report, "not_json", [5])
    assert_error(report, "not_object", [9])
    assert find(report, "empty_file") is None


def test_crlf_bom_and_unicode_separators_keep_line_numbers(tmp_path):
    # U+2028, U+0085 and form feed inside a JSON string are not line breaks in a JSONL file
    odd = json.dumps(chat("one\u2028two\x85three\x0cfour", "ok"), ensure_ascii=False)
    text = "\ufeff" + odd + "\r\n\r\n" + "oops\r\n" + json.dumps(chat("x", "y")) + "\r\n" + "[]"
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(text.encode("utf-8"))
    report = check_file(path)
    assert report.format == "chat"
    assert report.examples == 2
    assert_error(report, "not_json", [3])
    assert_error(report, "not_object", [5])


def test_first_lines_are_capped_but_all_counted(tmp_path):
    rows = [chat()] + ["bad"] * 8
    report = check_rows(tmp_path, rows)
    assert_error(report, "not_json", [2, 3, 4, 5, 6], count=8)
    assert report.errors == 8


def test_report_error_and_warning_totals(tmp_path):
    rows = [chat(), "x", "y", "[]", chat()]
    report = check_rows(tmp_path, rows)
    assert report.errors == 3
    assert report.warnings == 2  # one duplicate, few examples
    data = report.to_dict()
    assert data["errors"] == 3 and data["warnings"] == 2
    json.dumps(data)  # serializable as is


# -- Warnings ------------------------------------------------------------------------------------


def test_duplicates_count_and_lines_of_later_copies(tmp_path):
    a, b = chat("a", "1"), chat("b", "2")
    rows = [a, b, chat("c", "3"), a, "", b, a, chat("d", "4"), b, a, a, a]
    report = check_rows(tmp_path, rows)
    f = find(report, "duplicate")
    assert f.level == "warning"
    # copies of a at 4, 7, 10, 11, 12 and of b at 6, 9; the first five lines are kept
    assert f.count == 7
    assert f.lines == [4, 6, 7, 9, 10]
    assert report.errors == 0


def test_whitespace_at_line_ends_does_not_hide_a_duplicate(tmp_path):
    text = json.dumps(chat()) + "\n" + json.dumps(chat()) + "   \n"
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    f = find(check_file(path), "duplicate")
    assert f is not None and f.lines == [2]


def test_no_duplicate_warning_for_distinct_examples(tmp_path):
    assert find(check_rows(tmp_path, distinct_chats(20)), "duplicate") is None


def test_too_long_with_max_tokens(tmp_path, o200k):
    rows = [
        chat("short", "ok"),
        chat("word " * 40, "ok"),
        chat("tiny", "yes"),
        chat("word " * 60, "fine"),
    ]
    lengths = [cookbook_tokens(r["messages"], o200k) for r in rows]
    limit = 30
    assert lengths[0] <= limit and lengths[2] <= limit
    assert lengths[1] > limit and lengths[3] > limit
    report = check_rows(tmp_path, rows, max_tokens=limit)
    f = find(report, "too_long")
    assert f.level == "warning"
    assert f.lines == [2, 4] and f.count == 2
    assert report.context_limit == limit
    assert report.tokens.max == max(lengths)  # still counted in full
    assert report.billed_tokens == sum(min(t, limit) for t in lengths) * default_epochs(4)
    # an example exactly at the limit is not too long
    at_limit = check_rows(tmp_path, rows, max_tokens=lengths[1])
    assert find(at_limit, "too_long").lines == [4]


def test_no_too_long_under_the_model_limit(tmp_path):
    report = check_rows(tmp_path, distinct_chats(3))
    assert find(report, "too_long") is None
    assert report.context_limit == 65_536


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, "fewer than 10"), (9, "fewer than 10"), (10, "fewer than 50"), (49, "fewer than 50")],
)
def test_few_examples(tmp_path, n, expected):
    report = check_rows(tmp_path, distinct_chats(n))
    f = find(report, "few_examples")
    assert f.level == "warning" and f.count == 1
    assert f.message.startswith(expected)
    assert report.errors == 0


def test_few_examples_messages_differ(tmp_path):
    nine = find(check_rows(tmp_path, distinct_chats(9)), "few_examples").message
    ten = find(check_rows(tmp_path, distinct_chats(10)), "few_examples").message
    assert nine != ten
    assert "refuses" in nine and "advises" in ten


def test_fifty_examples_are_enough(tmp_path):
    assert find(check_rows(tmp_path, distinct_chats(50)), "few_examples") is None


def test_few_examples_counts_only_valid_examples(tmp_path):
    rows = distinct_chats(9) + ["bad"] * 5
    f = find(check_rows(tmp_path, rows), "few_examples")
    assert f.message.startswith("fewer than 10")


def test_validation_file_no_few_examples_and_no_cost(tmp_path):
    report = check_rows(tmp_path, distinct_chats(3), training=False, price_per_1m=10.0)
    assert find(report, "few_examples") is None
    assert report.findings == []
    assert report.tokens is not None and report.tokens.total > 0
    assert report.epochs is None
    assert report.billed_tokens is None
    assert report.cost is None
    assert report.price_per_1m is None


def test_completion_no_space(tmp_path):
    rows = [
        pc("Q: a\nA:", " yes"),
        pc("Q: b\nA:", "no"),
        pc("Q: c\nA:", "\tmaybe"),
        pc("Q: d\nA:", " fine"),
    ]
    report = check_rows(tmp_path, rows)
    f = find(report, "completion_no_space")
    assert f.level == "warning"
    assert f.lines == [2, 3]
    assert report.errors == 0
    assert report.examples == 4  # a warning does not drop the example


def test_delimiter_in_completion(tmp_path):
    rows = [
        pc("Human: hello\nAI:", " Hi there.\nHuman: "),
        pc(
            "Human: hello\nAI: Hi there.\nHuman: how are you?\nAI:",
            " Fine. Human: and you?\nHuman: ",
        ),
        pc("Human: tell me\nAI:", " Nothing to tell.\nHuman: "),
        pc("Human: who?\nAI:", " As the AI: I am me.\nHuman: "),
    ]
    report = check_rows(tmp_path, rows)
    f = find(report, "delimiter_in_message")
    assert f.level == "warning"
    assert f.lines == [2, 4]
    assert f.example == "Human:"
    assert report.errors == 0


def test_delimiter_learned_from_an_earlier_line(tmp_path):
    rows = [
        pc("Human: hi\nAI:", " Hello.\nHuman: "),
        pc("Human: again\nAI:", " Hello again. Human: no stop here"),
    ]
    f = find(check_rows(tmp_path, rows), "delimiter_in_message")
    assert f is not None and f.lines == [2]


def test_no_delimiter_warning_without_labels(tmp_path):
    rows = [pc("Translate: cat", " Human chat"), pc("Translate: dog", " The AI said hi")]
    report = check_rows(tmp_path, rows)
    assert find(report, "delimiter_in_message") is None


# -- Tokens, epochs and cost ---------------------------------------------------------------------


def test_chat_tokens_match_the_cookbook(tmp_path, o200k):
    rows = [
        msgs(
            system("You are a terse assistant. Answer in one line."),
            user("What's the capital of France?", name="alice"),
            assistant("Paris.", weight=0),
            user("And of Japan — and its population? 🗼"),
            assistant("Tokyo, about 14 million people.", weight=1),
        ),
        chat("Hi", "Hello"),
        sharegpt(("system", "Be brief."), ("human", "Hi there"), ("gpt", "Hello!")),
    ]
    path = write_jsonl(tmp_path, rows[:2])
    report = check_file(path)
    expected = [cookbook_tokens(r["messages"], o200k) for r in rows[:2]]
    assert expected[1] == 3 + (3 + 1 + 1) + (3 + 1 + 1)  # "user", "Hi", "assistant", "Hello"
    assert report.tokens.total == sum(expected)
    assert report.tokens.min == min(expected) and report.tokens.max == max(expected)
    assert report.histogram == {t: 1 for t in expected}
    # the same example as sharegpt counts as its chat equivalent
    sg = check_file(write_jsonl(tmp_path, [rows[2]], "sg.jsonl"))
    as_chat = [system("Be brief."), user("Hi there"), assistant("Hello!")]
    assert sg.tokens.total == cookbook_tokens(as_chat, o200k)


def test_sharegpt_top_level_system_is_counted(tmp_path, o200k):
    row = sharegpt(("human", "Hi there"), ("gpt", "Hello!"), system="You are a pirate. Arr.")
    report = check_rows(tmp_path, [row])
    assert report.errors == 0
    as_chat = [system("You are a pirate. Arr."), user("Hi there"), assistant("Hello!")]
    assert report.tokens.total == cookbook_tokens(as_chat, o200k)


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() and "<|" not in s)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(turns=st.lists(st.tuples(_text, _text), min_size=1, max_size=3), sys_prompt=_text)
def test_chat_tokens_match_the_cookbook_for_any_text(tmp_path, o200k, turns, sys_prompt):
    messages = [system(sys_prompt)]
    for question, answer in turns:
        messages += [user(question), assistant(answer)]
    report = check_file(write_jsonl(tmp_path, [{"messages": messages}], "h.jsonl"))
    assert report.errors == 0, report.findings
    assert report.tokens.total == cookbook_tokens(messages, o200k)


def test_prompt_completion_tokens_with_davinci(tmp_path, cl100k):
    rows = [
        pc("Human: What's 2+2?\nAI:", " 4, of course.\nHuman: "),
        pc(
            "Summarize:\n\nThe quick brown fox jumps over the lazy dog.\n\n###\n\n", " A fox jumps."
        ),
        pc("naïve café\nAI:", " ünïcödé ✓\nHuman: "),
    ]
    report = check_rows(tmp_path, rows, model="davinci-002")
    expected = [len(cl100k.encode(r["prompt"])) + len(cl100k.encode(r["completion"])) for r in rows]
    assert report.tokenizer == "cl100k_base"
    assert report.model == "davinci-002"
    assert report.histogram == {t: expected.count(t) for t in expected}
    assert report.tokens.total == sum(expected)


def ten_sized_examples() -> tuple[list[dict], list[int]]:
    """Ten prompt/completion examples of 2 to 11 cl100k tokens ('hello' and k times ' hello')."""
    rows = [pc("hello" if k % 2 else "Hello", " hello" * k) for k in range(1, 11)]
    return rows, [k + 1 for k in range(1, 11)]


def test_summary_epochs_billed_and_cost(tmp_path, cl100k):
    rows, sizes = ten_sized_examples()
    assert sizes == [len(cl100k.encode(r["prompt"] + r["completion"])) for r in rows]
    report = check_rows(tmp_path, rows, model="davinci-002", price_per_1m=2.5)
    t = report.tokens
    assert (t.min, t.mean, t.p90, t.max, t.total) == (2, 6.5, 10, 11, 65)
    assert report.epochs == 10 == default_epochs(10)
    assert report.billed_tokens == 650
    assert report.price_per_1m == 2.5
    assert report.cost == pytest.approx(650 * 2.5 / 1e6, abs=1e-4)


def test_billed_tokens_capped_at_the_limit(tmp_path):
    rows, sizes = ten_sized_examples()
    report = check_rows(tmp_path, rows, model="davinci-002", max_tokens=8)
    assert find(report, "too_long").lines == [8, 9, 10]
    assert report.billed_tokens == sum(min(s, 8) for s in sizes) * 10 == 590
    # the model's own price when none is given (davinci-002: $6 per 1M)
    assert report.price_per_1m == 6.0
    assert report.cost == pytest.approx(590 * 6 / 1e6, abs=1e-4)


@pytest.mark.parametrize(
    ("sizes", "p90"),
    [
        ([5] * 9 + [100], 5),
        ([5] * 8 + [100] * 2, 100),
        ([7], 7),
        ([3, 9], 9),
        (list(range(2, 22)), 19),  # 20 values: the 18th smallest
    ],
)
def test_p90_nearest_rank(tmp_path, sizes, p90):
    rows = [pc("hello" if i % 2 else "Hello", " hello" * (s - 1)) for i, s in enumerate(sizes)]
    report = check_rows(tmp_path, rows, model="davinci-002")
    t = report.tokens
    ordered = sorted(sizes)
    assert t.p90 == p90 == ordered[math.ceil(0.9 * len(sizes)) - 1]
    assert (t.min, t.max, t.total) == (ordered[0], ordered[-1], sum(sizes))
    assert t.mean == round(sum(sizes) / len(sizes), 1)


@pytest.mark.parametrize(
    ("n", "epochs"),
    [
        (1, 25),
        (3, 25),
        (4, 25),
        (5, 20),
        (10, 10),
        (33, 3),
        (34, 3),
        (100, 3),
        (8333, 3),
        (8334, 2),
        (10_000, 2),
        (12_500, 2),
        (12_501, 1),
        (30_000, 1),
    ],
)
def test_default_epochs_follow_openai(n, epochs):
    assert default_epochs(n) == epochs


@pytest.mark.parametrize(("n", "epochs"), [(5, 20), (100, 3), (10_000, 2)])
def test_epochs_of_a_checked_file(tmp_path, n, epochs):
    rows = [pc(f"Q{i}\nA:", f" answer {i}") for i in range(n)]
    report = check_rows(tmp_path, rows, price_per_1m=1.0)
    assert report.examples == n
    assert report.epochs == epochs
    assert report.billed_tokens == report.tokens.total * epochs
    assert report.cost == round(report.billed_tokens / 1e6, 4)


def test_epochs_of_thirty_thousand_examples(tmp_path):
    lines = [f'{{"prompt": "Q{i}\\nA:", "completion": " a {i}"}}' for i in range(30_000)]
    report = check_rows(tmp_path, lines)
    assert report.examples == 30_000
    assert report.epochs == 1
    assert report.billed_tokens == report.tokens.total


def test_examples_with_errors_are_not_counted_for_tokens(tmp_path, o200k):
    good = chat("Hi", "Hello")
    rows = [good, msgs(user("a very long question " * 20)), chat("x", "y", id=1)]
    report = check_rows(tmp_path, rows)
    assert report.examples == 1
    assert report.tokens.total == cookbook_tokens(good["messages"], o200k)


def test_progress_called_per_thousand_examples(tmp_path):
    calls = []
    rows = [pc(f"Q{i}\nA:", f" a {i}") for i in range(2500)]
    path = write_jsonl(tmp_path, rows)
    check_file(path, progress=calls.append)
    # called every 1000 lines with the characters read so far
    assert len(calls) == 2 and 0 < calls[0] < calls[1] <= path.stat().st_size


# -- Models --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["llama-3-8b", "claude-3", "not-a-model"])
def test_unknown_model_raises(tmp_path, model):
    path = write_jsonl(tmp_path, [chat()])
    with pytest.raises(OptionError) as info:
        check_file(path, model=model)
    assert model in str(info.value)


def test_unknown_model_raises_on_an_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(OptionError):
        check_file(path, model="no-such-model")


def test_fine_tuned_model_name_resolves_to_its_base(tmp_path, o200k):
    name = "ft:gpt-4o-mini-2024-07-18:org:suffix:id"
    report = check_rows(tmp_path, distinct_chats(3), model=name)
    assert report.model == name
    assert report.tokenizer == "o200k_base"
    assert report.context_limit == 65_536
    expected = sum(cookbook_tokens(r["messages"], o200k) for r in distinct_chats(3))
    assert report.tokens.total == expected
    assert report.errors == 0


def test_fine_tuned_model_cost_with_a_price(tmp_path):
    report = check_rows(
        tmp_path, distinct_chats(3), model="ft:gpt-4o-mini-2024-07-18:org:x:1", price_per_1m=3
    )
    assert report.cost == round(report.billed_tokens * 3 / 1e6, 4)


@pytest.mark.parametrize(
    ("alias", "tokenizer", "limit", "price"),
    [
        ("gpt-4o-mini", "o200k_base", 65_536, 3.0),
        ("gpt-4.1-mini", "o200k_base", 65_536, 5.0),
        ("gpt-3.5-turbo", "cl100k_base", 16_385, 8.0),
    ],
)
def test_undated_alias(tmp_path, alias, tokenizer, limit, price):
    report = check_rows(tmp_path, distinct_chats(3), model=alias)
    assert report.model == alias
    assert report.tokenizer == tokenizer
    assert report.context_limit == limit
    assert report.price_per_1m == price
    assert report.errors == 0


def test_model_changes_the_tokenizer_of_a_chat_file(tmp_path, cl100k):
    rows = [chat("naïve façade résumé", "d’accord — très bien")]
    report = check_rows(tmp_path, rows, model="gpt-3.5-turbo-0125")
    assert report.tokenizer == "cl100k_base"
    assert report.tokens.total == cookbook_tokens(rows[0]["messages"], cl100k)


# -- Empty and missing files ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "\n  \n\t\n", "\ufeff\n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text, encoding="utf-8")
    report = check_file(path)
    f = assert_error(report, "empty_file", [], count=1)
    assert f.level == "error"
    assert report.examples == 0
    assert report.format is None
    assert report.tokens is None and report.cost is None


def test_file_of_only_bad_lines_is_not_reported_empty(tmp_path):
    report = check_rows(tmp_path, ["bad", "[]"])
    assert find(report, "empty_file") is None
    assert report.errors == 2
    assert report.format is None


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as info:
        check_file(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(info.value)


def test_invalid_utf8_is_an_input_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9", "completion": " x"}\n')
    with pytest.raises(InputError) as info:
        check_file(path)
    assert info.value.line == 1


@pytest.mark.parametrize("before", [2, 400])
def test_invalid_utf8_line_number(tmp_path, before):
    good = json.dumps(chat()).encode() + b"\n"
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good * before + b'{"prompt": "caf\xe9", "completion": " x"}\n' + good * 50)
    with pytest.raises(InputError) as info:
        check_file(path)
    assert info.value.line == before + 1


# -- Robustness: known bugs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "deep", ["[" * 100_000, '{"messages": ' + "[" * 5000 + "]" * 5000 + "}"], ids=["open", "closed"]
)
def test_deeply_nested_line_is_a_finding(tmp_path, deep):
    report = check_rows(tmp_path, [chat(), deep, chat("a", "b")])
    assert find(report, "not_json").lines == [2]
    assert report.examples == 2


def test_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        check_file(tmp_path)


@pytest.mark.parametrize(
    "options", [{"max_tokens": 0}, {"max_tokens": -5}, {"price_per_1m": -3.0}], ids=str
)
def test_nonsense_limits_are_option_errors(tmp_path, options):
    path = write_jsonl(tmp_path, distinct_chats(3))
    with pytest.raises(OptionError):
        check_file(path, **options)
