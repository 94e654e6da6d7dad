"""`convtune eval` and `convtune record` with real parts: a tiny local model, a real `convtune
serve` standing in for a remote service, and the fault-injecting fake OpenAI for 429s, 5xx and a
killed run resumed from its cache."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from convtune import PrepareOptions, check_file, prepare
from convtune.cli.main import main
from convtune.dataset.examples import ExampleOptions
from convtune.errors import InputError, OptionError
from convtune.evaluation.answers import Answer, AnswerCache, Settings, answer_key
from convtune.evaluation.prompts import read_prompts
from convtune.evaluation.targets import Target, parse_target
from convtune.state.home import data_dir

from .conftest import EXAMPLE, ROOT, SEED_SHEET
from .fake_openai import FakeOpenAI
from .servers import serve, wait_for
from .tiny_models import make_tiny_model

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")
MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """A second tiny model with other weights (it knows more words)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-other"), vocab_words=["bicycle"])


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    report = prepare(EXAMPLE, out, PrepareOptions(force=True))
    return Path(report.outputs[1])


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- what is asked, what should be answered ------------------------------------------------------


def test_the_reference_is_the_last_trained_reply(tmp_path):
    path = _jsonl(
        tmp_path / "v.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello", "weight": 0},
                    {"role": "user", "content": "Price?"},
                    {"role": "assistant", "content": "89 EUR"},
                ]
            },
            {"messages": [{"role": "assistant", "content": "Welcome!"}]},  # asks nothing
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "assistant", "content": "ignored", "weight": 0},
                ]
            },
        ],
    )
    data = read_prompts(path)
    assert data.format == "chat" and data.unasked == [2]
    first, third = data.prompts
    assert first.reference == "89 EUR" and first.line == 1
    assert [r for r, _ in first.messages] == ["system", "user", "assistant", "user"]
    assert third.reference == "b" and third.messages == (("user", "a"),)


def test_a_preference_file_asks_its_input_and_expects_the_chosen_reply(tmp_path):
    options = PrepareOptions(examples=ExampleOptions(format="preference"), valid_ratio=0)
    report = prepare(ROOT / "examples" / "preferences.csv", tmp_path, options)
    data = read_prompts(report.outputs[0])
    assert data.format == "preference" and len(data.prompts) == 22 and not data.unasked
    first, second = data.prompts[:2]
    assert first.messages == (("user", "Hi, my order CB-20533 hasn't arrived yet. It's been four"
                                        " days."),)  # fmt: skip
    assert first.reference.startswith("Sorry for the wait!")  # preferred, not "Wait."
    assert [r for r, _ in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1][1] == first.reference  # the history holds the chosen replies
    # teacher forcing scores the chosen reply: the record is a chat example of it
    assert second.record["messages"][-1] == {"role": "assistant", "content": second.reference}


def test_legacy_prompts_become_messages_again(tmp_path):
    sheet = tmp_path / "seed.csv"
    sheet.write_text(SEED_SHEET, encoding="utf-8")
    report = prepare(
        sheet,
        tmp_path / "out",
        PrepareOptions(examples=ExampleOptions(format="prompt-completion"), valid_ratio=0),
    )
    data = read_prompts(report.outputs[0])
    last = data.prompts[-1]  # the seed's own example: ... Oh okey -> Yeah
    assert last.reference == "Yeah"
    assert last.messages[-1] == ("user", "Oh okey") and last.messages[0] == (
        "user",
        "Can you read me the news?",
    )
    assert [r for r, _ in last.messages] == ["user", "assistant", "user", "assistant", "user"]


def test_plain_prompts_are_asked_as_their_text(tmp_path):
    """A prompt-completion file that does not speak Human:/AI: is asked as one user message with
    the prompt's text (OpenAI's legacy `###` separator taken off), never as an empty message."""
    path = _jsonl(
        tmp_path / "plain.jsonl",
        [
            {"prompt": "Hello there", "completion": " Hi!"},
            {
                "prompt": "Summarize: the cat sat on the mat.\n\n###\n\n",
                "completion": " A cat sat.",
            },
            {"prompt": "Great product!\n\n###\n\n", "completion": " positive\n"},  # a "\n" stop
        ],
    )
    data = read_prompts(path)
    assert [p.messages for p in data.prompts] == [
        (("user", "Hello there"),),
        (("user", "Summarize: the cat sat on the mat."),),
        (("user", "Great product!"),),
    ]
    # whitespace around a reference counts for nothing, as around an answer (both stripped)
    assert [p.reference for p in data.prompts] == ["Hi!", "A cat sat.", "positive"]


def test_a_preamble_above_the_dialogue_opens_the_first_user_message(tmp_path):
    """Kept where every model reads it: a local legacy model leaves system messages out."""
    from convtune.local.chat import LocalChat

    original = "You are the shop's assistant.\nHuman: Price?\nAI: 89 EUR\nHuman: Sunday?\nAI:"
    path = _jsonl(tmp_path / "v.jsonl", [{"prompt": original, "completion": " No.\nHuman: "}])
    (prompt,) = read_prompts(path).prompts
    assert prompt.messages == (
        ("user", "You are the shop's assistant.\nPrice?"),
        ("assistant", "89 EUR"),
        ("user", "Sunday?"),
    )
    legacy = LocalChat(None, None, "prompt-completion", ("Human", "AI"))
    rendered, _ = legacy.prompt(prompt.chat_messages())
    assert (
        rendered == "Human: You are the shop's assistant.\nPrice?\nAI: 89 EUR\nHuman: Sunday?\nAI:"
    )
    # before an assistant turn, the preamble is a user message of its own
    path = _jsonl(
        tmp_path / "w.jsonl",
        [{"prompt": "Be kind.\nAI: Welcome!\nHuman: Hi\nAI:", "completion": " Hello"}],
    )
    (prompt,) = read_prompts(path).prompts
    assert prompt.messages == (("user", "Be kind."), ("assistant", "Welcome!"), ("user", "Hi"))


def test_a_prompt_without_text_is_never_asked(tmp_path, capsys):
    """Voice data (an empty prompt) asks nothing: counted and named beside the others, and a file
    of nothing else is refused with the first line."""
    mixed = _jsonl(
        tmp_path / "mixed.jsonl",
        [{"prompt": "Hello", "completion": " Hi"}, {"prompt": "", "completion": " Hey"}],
    )
    data = read_prompts(mixed)
    assert [p.line for p in data.prompts] == [1] and data.unasked == [2]
    voice = _jsonl(tmp_path / "voice.jsonl", [{"prompt": "\n\n###\n\n", "completion": " Hey"}])
    with pytest.raises(InputError, match=r"voice.jsonl:1: no examples to evaluate"):
        read_prompts(voice)
    assert main(["record", "m", "--data", str(voice), "-o", str(tmp_path / "g.jsonl")]) == 1
    assert "voice.jsonl:1: no examples to record" in capsys.readouterr().err


def test_a_bad_data_file_is_refused_with_its_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl:1: an example with no assistant message"):
        read_prompts(bad)
    assert main(["eval", "m", "--data", str(bad)]) == 1
    assert "bad.jsonl:1:" in capsys.readouterr().err


def test_model_names_carry_their_backend(tmp_path, capsys):
    assert parse_target("ft:gpt-4o-mini:acme::x@openai") == Target(
        "ft:gpt-4o-mini:acme::x@openai", "ft:gpt-4o-mini:acme::x", "openai"
    )
    served = parse_target("ft:SmolLM2::ftjob-1@http://127.0.0.1:8000/v1/")
    assert (served.model, served.backend, served.base_url) == (
        "ft:SmolLM2::ftjob-1", "openai", "http://127.0.0.1:8000/v1",
    )  # fmt: skip
    odd = tmp_path / "runs@best"  # a model folder whose name holds an @: a path, whole
    odd.mkdir()
    assert parse_target(str(odd)) == Target(str(odd), str(odd), "local")
    with pytest.raises(
        OptionError,
        match=r"unknown backend 'bogus' in 'm@bogus' \(local, openai or an http\(s\) URL\)",
    ):
        parse_target("m@bogus")
    assert (
        main(["eval", "SmolLM2-135M-Instruct@bogus", "--data", str(tmp_path / "none.jsonl")]) == 1
    )
    assert "unknown backend 'bogus'" in capsys.readouterr().err
    assert parse_target("m", backend="openai", base_url="http://h/v1").base_url == "http://h/v1"
    assert parse_target("m@local", base_url="http://h/v1").backend == "local"


# -- models that cannot answer, and why answers failed ---------------------------------------------


def _questions(tmp_path: Path, n: int) -> Path:
    return _jsonl(
        tmp_path / "v.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"echo q{i}"},
                ]
            }
            for i in range(n)
        ],
    )


def _chats(fake: FakeOpenAI, model: str | None = None) -> list[dict]:
    return [
        r["json"] for r in fake.requests
        if r["path"].endswith("/chat/completions") and model in (None, r["json"]["model"])
    ]  # fmt: skip


def test_unknown_models_are_refused_before_anything_is_asked(tmp_path, capsys):
    valid = _questions(tmp_path, 3)
    cache = tmp_path / "answers.jsonl"
    for model in ("nosuchmodel", "ft:SmolLM2-135M-Instruct::ftjob-nope"):
        assert main(["eval", model, "--data", str(valid), "--cache", str(cache)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"convtune: error: unknown model '{model}' on this machine")
        assert len(err.splitlines()) == 1
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Right facts matter.", encoding="utf-8")
    with FakeOpenAI() as fake:
        fake.answer = lambda messages: "echo " + messages[-1]["content"]
        where = ["--api-key", fake.key, "--cache", str(cache)]
        # a remote model the service does not know: its first answer says so, nothing more is
        # asked of any model (the known one before it was asked its first prompt only)
        args = ["eval", f"{MODEL}@{fake.url}", f"nosuch@{fake.url}", "--data", str(valid)]
        assert main([*args, *where]) == 1
        err = capsys.readouterr().err
        assert f"convtune: error: unknown model 'nosuch' at {fake.url}" in err
        assert len(_chats(fake, MODEL)) == 1 and len(_chats(fake, "nosuch")) == 1
        # a judge is checked like the models, before any of them is asked
        args = ["eval", f"{MODEL}@{fake.url}", "--data", str(valid), "--judge", "nosuchjudge",
                "--grader", f"score_model:{rubric}"]  # fmt: skip
        assert main([*args, *where]) == 1
        err = capsys.readouterr().err
        assert "convtune: error: the judge (--judge): unknown model 'nosuchjudge'" in err
        assert len(_chats(fake, MODEL)) == 1
    assert cache.read_text().count("\n") == 1  # the one answer that came back


def test_a_judge_that_fails_during_the_run_is_counted_and_said(tmp_path, capsys):
    """The judge answers the check and one verdict, then the service loses it: each verdict it
    could not give is an error with its reason, said once on stderr, and the run exits 1."""
    valid = _questions(tmp_path, 4)
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Right facts matter.", encoding="utf-8")
    judge = "gpt-4.1-mini-2025-04-14"
    with FakeOpenAI() as fake:

        def answer(messages: list[dict]) -> str:
            if "Right facts matter" in json.dumps(messages):  # a verdict: the judge goes away
                fake.models.pop(judge, None)
                return "Score: 8"
            return "echo " + messages[-1]["content"]

        fake.answer = answer
        code = main(
            ["eval", f"{MODEL}@{fake.url}", "--data", str(valid), "--api-key", fake.key,
             "--grader", "string_check:eq", "--grader", f"score_model:{rubric}",
             "--judge", f"{judge}@{fake.url}", "--json", "--no-cache", "--concurrency", "1"]
        )  # fmt: skip
        verdicts = _chats(fake, judge)
    out, err = capsys.readouterr()
    assert code == 1
    model = json.loads(out)["models"][0]
    assert model["metrics"]["string_check_eq"]["mean"] == 1.0
    assert model["metrics"]["score_model"]["mean"] == 0.8  # the one verdict given
    assert model["errors"] == 3
    ((reason,),) = [list(r) for r in [model["error_messages"]]]
    assert reason["examples"] == 3 and reason["message"].startswith("score_model: the judge")
    assert "does not exist" in reason["message"]
    assert err.count("does not exist") == 1 and "3 examples: score_model: the judge" in err
    assert len(verdicts) == 3  # the check, the verdict, the failure: then it is asked no more


def test_failed_answers_say_why_once_per_reason(tmp_path, capsys):
    valid = _questions(tmp_path, 4)
    with FakeOpenAI() as fake:
        fake.answer = lambda messages: "echo " + messages[-1]["content"]
        fake.fail("/chat/completions", 400, times=3)  # the first answer, then two more
        code = main(
            ["eval", f"{MODEL}@{fake.url}", "--data", str(valid), "--api-key", fake.key,
             "--json", "--no-cache", "--concurrency", "1"]
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    model = json.loads(out)["models"][0]
    assert model["errors"] == 2
    assert model["error_messages"] == [
        {"message": f"chat with {MODEL}: injected 400 (400)", "examples": 2}
    ]
    assert f"convtune: {MODEL}@{fake.url}: 2 of 4 examples failed:" in err
    assert err.count("injected 400") == 1


def test_nothing_listening_fails_fast_naming_the_address(tmp_path, capsys):
    import socket

    with socket.socket() as free:  # a port where nothing listens
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}/v1"
    from convtune.evaluation.answers import UNREACHABLE_PATIENCE

    valid = _questions(tmp_path, 3)
    code = main(["eval", f"{MODEL}@{url}", "--data", str(valid), "--api-key", "k", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 1
    # the quick schedule of a refused connection (not the 30 minutes of a 429 or a 5xx): the
    # waits double from 1 s, and none starts once UNREACHABLE_PATIENCE seconds have been waited
    waits = [int(w) for w in re.findall(r"trying again in (\d+) s", err)]
    assert len(waits) >= 2 and waits == [1, 2, 4, 8, 16][: len(waits)]
    assert sum(waits[:-1]) < UNREACHABLE_PATIENCE
    (last,) = [line for line in err.splitlines() if line.startswith("convtune: error:")]
    assert f"cannot reach {url}" in last


def test_a_service_on_this_machine_needs_no_key_from_the_user(tmp_path, capsys, monkeypatch):
    from convtune.openai_backend.openai_service import NO_KEY

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    valid = _questions(tmp_path, 2)
    args = ["--data", str(valid), "--no-cache", "--json", "--grader", "string_check:eq"]
    with FakeOpenAI(key=NO_KEY) as keyless:  # a server that takes whatever key it is sent
        keyless.answer = lambda messages: "echo " + messages[-1]["content"]
        assert main(["eval", f"{MODEL}@{keyless.url}", *args]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["errors"] == 0
    with FakeOpenAI() as needs_a_key:  # as convtune serve does: a clear one-line refusal
        assert main(["eval", f"{MODEL}@{needs_a_key.url}", *args]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "refused the API key (401" in err and "set OPENAI_API_KEY or pass --api-key" in err


def test_option_mistakes_are_usage_errors_and_help_says_how(tmp_path, capsys):
    valid = _questions(tmp_path, 1)
    assert main(["eval", "m", "--data", str(valid), "--judge", "j"]) == 2
    assert "--judge grades a score_model grader, and none was given" in capsys.readouterr().err
    assert main(["eval", "m", "--data", str(valid), "--grader", "bleu,rouge_l"]) == 2
    assert "repeat the option (--grader bleu --grader rouge_l)" in capsys.readouterr().err
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Right facts matter.", encoding="utf-8")
    assert main(["eval", "m", "--data", str(valid), "--grader", f"score_model:{rubric}"]) == 1
    assert "give --judge MODEL[@BACKEND]" in capsys.readouterr().err
    assert main(["eval", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "$CONVTUNE_HOME/eval/answers.jsonl" in help_text
    assert "repeat the option for more" in help_text


# -- the answers cache -----------------------------------------------------------------------------


def _entry(key: str, text: str) -> str:
    return json.dumps({"key": key, "answer": {"text": text, "seconds": 0.1}})


def test_a_changed_model_file_gets_new_answers(tmp_path):
    """A path model's answers are keyed by its weights' size and modification time too."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF first")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    prompt = read_prompts(
        _jsonl(tmp_path / "v.jsonl", [{"prompt": "Hi", "completion": " Yo"}])
    ).prompts[0]
    keys = {m: answer_key(parse_target(str(m)), prompt, Settings()) for m in (gguf, folder)}
    assert keys == {m: answer_key(parse_target(str(m)), prompt, Settings()) for m in (gguf, folder)}
    gguf.write_bytes(b"GGUF second, exported again")
    (folder / "model.safetensors").write_bytes(b"trained again")
    os.utime(folder / "model.safetensors", ns=(1, 1))  # same size would do: the time differs
    for model, before in keys.items():
        assert answer_key(parse_target(str(model)), prompt, Settings()) != before
    # names that are no path keep their key: a hub id, a fine-tuned model's id
    assert (
        parse_target("ft:SmolLM2-135M-Instruct::ftjob-1").key()
        == "local||ft:SmolLM2-135M-Instruct::ftjob-1"
    )


def test_the_cache_is_never_an_input_file_or_a_foreign_one(tmp_path, capsys):
    valid = _jsonl(tmp_path / "v.jsonl", [{"prompt": "Hi", "completion": " Yo"}])
    before = valid.read_bytes()
    for command in (["eval", "m"], ["record", "m", "-o", str(tmp_path / "g.jsonl")]):
        assert (
            main([*command, "--data", str(valid), "--cache", str(tmp_path / "." / "v.jsonl")]) == 1
        )
        assert "is the --data file" in capsys.readouterr().err
    golden = _jsonl(
        tmp_path / "golden.jsonl",
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}],
    )
    assert main(["eval", "m", "--reference", str(golden), "--cache", str(golden)]) == 1
    assert "is the --reference file" in capsys.readouterr().err
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\n", encoding="utf-8")
    assert main(["eval", "m", "--data", str(valid), "--cache", str(notes)]) == 1
    assert f"{notes}:1: not an answers cache" in capsys.readouterr().err
    assert valid.read_bytes() == before and notes.read_text() == "my notes\n"


def test_an_answer_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(
        _entry("a", "kept") + "\n" + _entry("b", "cut")[:30], encoding="utf-8"
    )  # killed
    cache = AnswerCache(path)
    assert len(cache) == 1
    cache.put("c", Answer("new", 0.2))
    again = AnswerCache(path)
    assert again.get("a").text == "kept" and again.get("c").text == "new" and again.get("b") is None
    assert path.read_text().endswith("\n")


# -- end to end -----------------------------------------------------------------------------------


def test_local_and_served_models_in_one_run(tiny, other, valid, tmp_path, capsys):
    """A real convtune serve answers with the same tiny model as the local backend: with greedy
    decoding both give the same answers, so their difference is exactly 0; the other model
    differs. The report is one self-contained page with a row per example."""
    report = tmp_path / "eval.html"
    with serve(tmp_path / "serve-home") as served:
        remote = f"{tiny}@{served.url}"
        code = main(
            [
                "eval", str(tiny), remote, str(other),
                "--data", str(valid), "--limit", "6", "--max-tokens", "6",
                "--api-key", served.key, "--report", str(report), "--json",
                "--cache", str(tmp_path / "answers.jsonl"),
            ]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["examples"] == 6
    local, served_model, second = out["models"]
    assert served_model["backend"] == "openai" and local["backend"] == "local"
    assert "valid_loss" in local and "valid_loss" not in served_model  # teacher forcing: local only
    assert local["load_seconds"] > 0 and "load_seconds" not in served_model  # loaded, not timed
    assert local["valid_loss"] > 0 and second["valid_loss"] > 0
    assert 0 <= local["valid_mean_token_accuracy"] < 1
    same = [d for d in out["differences"] if d["b"] == remote]
    assert same and all(d["mean"] == d["low"] == d["high"] == 0 for d in same)
    assert {d["metric"] for d in same} == {"fuzzy_match", "bleu", "rouge_l"}

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: dict[str, int] = {}
            self.current: str | None = None
            self.body = False
            self.urls: list[str] = []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "table":
                self.current = attrs.get("id")
            elif tag == "tbody":
                self.body = True
            elif tag == "tr" and self.body and self.current:
                self.tables[self.current] = self.tables.get(self.current, 0) + 1
            for name in ("src", "href"):
                if str(attrs.get(name, "")).startswith(("http:", "https:", "//")):
                    self.urls.append(attrs[name])

        def handle_endtag(self, tag):
            if tag == "tbody":
                self.body = False

    rows = Rows()
    rows.feed(report.read_text(encoding="utf-8"))
    assert rows.tables["summary"] == 3 and rows.tables["examples"] == 6 and rows.urls == []


def test_eval_answers_a_preference_file_with_a_local_model(tiny, tmp_path, capsys):
    options = PrepareOptions(examples=ExampleOptions(format="preference"), valid_ratio=0)
    pairs = prepare(ROOT / "examples" / "preferences.csv", tmp_path, options).outputs[0]
    code = main(["eval", str(tiny), "--data", pairs, "--limit", "3", "--max-tokens", "4",
                 "--json", "--cache", str(tmp_path / "answers.jsonl")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["examples"] == 3 and out["models"][0]["valid_loss"] > 0


def test_remote_faults_are_retried_and_answers_are_never_asked_twice(tmp_path, capsys):
    valid = _jsonl(
        tmp_path / "v.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"echo q{i}"},
                ]
            }
            for i in range(8)
        ],
    )
    cache = tmp_path / "answers.jsonl"
    with FakeOpenAI() as fake:
        fake.answer = lambda messages: "echo " + messages[-1]["content"]
        fake.fail("/chat/completions", 429, times=3)
        fake.fail("/chat/completions", 503, times=2)
        args = ["eval", f"{MODEL}@{fake.url}", "--data", str(valid), "--api-key", fake.key]
        args += ["--cache", str(cache), "--json", "--grader", "string_check:eq"]
        assert main(args) == 0
        first = json.loads(capsys.readouterr().out)["models"][0]
        assert first["errors"] == 0 and first["metrics"]["string_check_eq"]["mean"] == 1.0
        asked = sum(1 for r in fake.requests if r["path"].endswith("/chat/completions"))
        assert main(args) == 0  # again: every answer comes from the cache
        assert sum(1 for r in fake.requests if r["path"].endswith("/chat/completions")) == asked
    assert len(cache.read_text().splitlines()) == 8


def test_a_killed_eval_resumes_from_its_cache(tmp_path):
    """The real command, killed while answers arrive, then run again: no prompt is asked twice
    but those in flight when it died. The fake answers three prompts and holds the next one
    until the process is dead, so the kill lands at a known point, whatever the machine's speed."""
    valid = _jsonl(
        tmp_path / "v.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"echo q{i}"},
                ]
            }
            for i in range(12)
        ],
    )
    cache = tmp_path / "answers.jsonl"
    answered: list[str] = []
    held: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def answer(messages: list[dict]) -> str:  # the fake's handler threads call it
        question = messages[-1]["content"]
        if len(answered) >= 3 and not release.is_set():
            held.append(question)
            holding.set()
            release.wait(timeout=120)
        answered.append(question)
        return "echo " + question

    def three_cached() -> bool:
        text = cache.read_text() if cache.exists() else ""
        return holding.is_set() and text.endswith("\n") and len(text.splitlines()) == 3

    with FakeOpenAI() as fake:
        fake.answer = answer
        args = [
            CONVTUNE,
            "eval",
            f"{MODEL}@{fake.url}",
            "--data",
            str(valid),
            "--cache",
            str(cache),
        ]
        args += ["--concurrency", "2", "--json"]
        env = dict(os.environ, OPENAI_API_KEY=fake.key)
        run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for(three_cached, timeout=60, every=0.05)
        finally:
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=30)
            before_kill = list(answered)
            release.set()
        assert len(before_kill) == 3 and held
        kept = [json.loads(line)["answer"]["text"] for line in cache.read_text().splitlines()]
        assert sorted(kept) == sorted("echo " + q for q in before_kill)

        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        asked = [r for r in fake.requests if r["path"].endswith("/chat/completions")]
        times = Counter(r["json"]["messages"][-1]["content"] for r in asked)
        assert sorted(times) == sorted(f"q{i}" for i in range(12))
        again = {q for q, n in times.items() if n > 1}  # asked by the killed run, unanswered
        assert set(held) <= again and len(again) <= 2 and max(times.values()) == 2
        assert not again & set(before_kill)  # what was answered came from the cache
        assert json.loads(done.stdout)["models"][0]["errors"] == 0


def test_record_writes_a_golden_file_that_check_accepts_and_eval_uses(valid, tmp_path, capsys):
    golden = tmp_path / "golden.jsonl"
    cache = ["--cache", str(tmp_path / "answers.jsonl")]
    with FakeOpenAI() as fake:
        fake.answer = lambda messages: "Recorded answer to " + messages[-1]["content"][:20]
        where = ["--base-url", fake.url, "--api-key", fake.key]
        args = ["record", MODEL, "--data", str(valid), "-o", str(golden), "--limit", "5"]
        assert main([*args, *where, *cache]) == 0
        assert "wrote" in capsys.readouterr().out
        report = check_file(golden)
        assert report.errors == 0 and report.examples == 5
        assert main([*args, *where, *cache]) == 1  # never overwritten without --force
        assert "already exists" in capsys.readouterr().err
        before = len(fake.requests)
        # the golden answers as references: the same model scores 1 on exact match, from the cache
        code = main(
            ["eval", MODEL, "--reference", str(golden), "--json", "--grader", "string_check:eq",
             *where, *cache]
        )  # fmt: skip
        assert code == 0 and len(fake.requests) == before
    result = json.loads(capsys.readouterr().out)
    assert result["models"][0]["metrics"]["string_check_eq"]["mean"] == 1.0
    assert result["examples"] == 5


def test_record_writes_nothing_while_an_answer_is_missing(valid, tmp_path, capsys):
    golden = tmp_path / "golden.jsonl"
    with FakeOpenAI() as fake:
        fake.answer = lambda messages: "" if "bike" in messages[-1]["content"].lower() else "ok"
        code = main(
            ["record", MODEL, "--data", str(valid), "-o", str(golden), "--base-url", fake.url,
             "--api-key", fake.key, "--no-cache"]
        )  # fmt: skip
    err = capsys.readouterr().err
    if code == 0:  # no prompt of this file mentions a bike
        assert golden.exists()
        return
    assert code == 1 and not golden.exists()
    assert "got no answer" in err and "nothing was written" in err


def test_smollm2_answers_and_is_scored_by_teacher_forcing(valid, smollm2_home, capsys):
    """The real default model: it answers in words, and its loss on the references is that of a
    language model that knows English (far below log(49152) = 10.8 of a uniform guess)."""
    code = main(
        ["eval", "SmolLM2-135M-Instruct", "--data", str(valid), "--limit", "3",
         "--max-tokens", "8", "--json", "--no-cache"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    model = result["models"][0]
    assert model["errors"] == 0 and model["tokens_per_second"] > 0
    assert model["load_seconds"] > 0  # loaded before its first answer was timed
    assert 0 < model["valid_loss"] < 6 and model["valid_mean_token_accuracy"] > 0.2
    assert all(model["metrics"][g] is not None for g in ("fuzzy_match", "bleu", "rouge_l"))


@pytest.fixture(scope="module")
def talker(tmp_path_factory) -> Path:
    """A tiny model that says something (untied: its answers are not empty once stripped)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-talker"), tied=False)


def test_a_local_model_is_loaded_before_its_answers_are_timed(talker, tmp_path):
    """The load (and a conversion) is reported on its own, never in the first answers' latency:
    the model is loaded with a one-token answer before the first timed one is asked."""
    from convtune.evaluation.graders import parse_graders
    from convtune.evaluation.run import EvalProgress, evaluate
    from convtune.local.local_service import LocalService

    data = read_prompts(_questions(tmp_path, 3))
    events: list[str] = []
    service = LocalService()
    progress = EvalProgress(
        load=lambda target, seconds: events.append(f"loaded in {seconds:.3f} s"),
        answer=lambda target, prompt, answer: events.append("answer"),
    )
    settings = Settings(max_tokens=2)
    target = parse_target(str(talker))
    result = evaluate(data, [target], parse_graders(["bleu"]), lambda t: service, AnswerCache(None),
                      settings=settings, progress=progress, teacher_forcing=False)  # fmt: skip
    assert events[0].startswith("loaded in") and events[1:] == ["answer"] * 3
    assert result.models[0].load_seconds == pytest.approx(float(events[0].split()[2]), abs=1e-3)
    # all answers cached: nothing is loaded
    events.clear()
    cache = AnswerCache(tmp_path / "answers.jsonl")
    for prompt, answer in zip(data.prompts, [Answer("x", 0.1)] * 3, strict=True):
        cache.put(answer_key(target, prompt, settings), answer)
    evaluate(data, [target], parse_graders(["bleu"]), lambda t: LocalService(), cache,
             settings=settings, progress=progress, teacher_forcing=False)  # fmt: skip
    assert events == ["answer"] * 3


def test_record_warns_of_answers_cut_at_max_tokens(talker, valid, tmp_path, capsys):
    golden = tmp_path / "golden.jsonl"
    args = ["record", str(talker), "--data", str(valid), "-o", str(golden), "--limit", "1"]
    assert main([*args, "--max-tokens", "2", "--no-cache"]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {golden}: 1 example\n" == out  # one, not "1 examples"
    assert "warning: 1 answer of 1 stopped at --max-tokens 2 before the model finished" in err
    assert "larger --max-tokens" in err


def test_record_never_writes_over_its_input(tmp_path, capsys):
    valid = _questions(tmp_path, 2)
    before = valid.read_bytes()
    for extra in ([], ["--force"]):
        assert (
            main(
                ["record", "m", "--data", str(valid), "-o", str(tmp_path / "." / "v.jsonl"), *extra]
            )
            == 1
        )
        assert "is the --data file: writing there would replace it" in capsys.readouterr().err
    cache = tmp_path / "answers.jsonl"
    cache.write_text("", encoding="utf-8")
    assert (
        main(
            [
                "record",
                "m",
                "--data",
                str(valid),
                "-o",
                str(cache),
                "--cache",
                str(cache),
                "--force",
            ]
        )
        == 1
    )
    assert "is the --cache file" in capsys.readouterr().err
    # the default cache in the data folder too: replacing it would lose every answer paid for
    default = data_dir() / "eval" / "answers.jsonl"
    default.parent.mkdir(parents=True, exist_ok=True)
    default.write_text("", encoding="utf-8")
    assert main(["record", "m", "--data", str(valid), "-o", str(default), "--force"]) == 1
    assert "is the --cache file" in capsys.readouterr().err
    assert valid.read_bytes() == before
