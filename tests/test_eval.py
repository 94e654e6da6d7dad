"""`convtune eval` and `convtune record` with real parts: a tiny local model, a real `convtune
serve` standing in for a remote service, and the fault-injecting fake OpenAI for 429s, 5xx and a
killed run resumed from its cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from convtune import PrepareOptions, check_file, prepare
from convtune.cli.main import main
from convtune.dataset.examples import ExampleOptions
from convtune.errors import InputError
from convtune.evaluation.answers import Answer, AnswerCache, Settings, answer_key
from convtune.evaluation.prompts import read_prompts
from convtune.evaluation.targets import Target, parse_target

from .conftest import EXAMPLE, ROOT, SEED_SHEET
from .fake_openai import FakeOpenAI
from .servers import serve
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
    assert last.messages[-1] == ("user", "Oh okey") and last.messages[0] == ("user", "Can you read me the news?")
    assert [r for r, _ in last.messages] == ["user", "assistant", "user", "assistant", "user"]


def test_plain_prompts_are_asked_as_their_text(tmp_path):
    """A prompt-completion file that does not speak Human:/AI: is asked as one user message with
    the prompt's text (OpenAI's legacy `###` separator taken off), never as an empty message."""
    path = _jsonl(
        tmp_path / "plain.jsonl",
        [
            {"prompt": "Hello there", "completion": " Hi!"},
            {"prompt": "Summarize: the cat sat on the mat.\n\n###\n\n", "completion": " A cat sat."},
        ],
    )
    data = read_prompts(path)
    assert [p.messages for p in data.prompts] == [
        (("user", "Hello there"),),
        (("user", "Summarize: the cat sat on the mat."),),
    ]
    assert [p.reference for p in data.prompts] == ["Hi!", "A cat sat."]


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
    assert rendered == "Human: You are the shop's assistant.\nPrice?\nAI: 89 EUR\nHuman: Sunday?\nAI:"
    # before an assistant turn, the preamble is a user message of its own
    path = _jsonl(tmp_path / "w.jsonl", [{"prompt": "Be kind.\nAI: Welcome!\nHuman: Hi\nAI:", "completion": " Hello"}])
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


def test_model_names_carry_their_backend():
    assert parse_target("ft:gpt-4o-mini:acme::x@openai") == Target(
        "ft:gpt-4o-mini:acme::x@openai", "ft:gpt-4o-mini:acme::x", "openai"
    )
    served = parse_target("ft:SmolLM2::ftjob-1@http://127.0.0.1:8000/v1/")
    assert (served.model, served.backend, served.base_url) == (
        "ft:SmolLM2::ftjob-1", "openai", "http://127.0.0.1:8000/v1",
    )  # fmt: skip
    assert parse_target("./odd@name").model == "./odd@name"  # not a backend: part of the name
    assert parse_target("m", backend="openai", base_url="http://h/v1").base_url == "http://h/v1"
    assert parse_target("m@local", base_url="http://h/v1").backend == "local"


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
    prompt = read_prompts(_jsonl(tmp_path / "v.jsonl", [{"prompt": "Hi", "completion": " Yo"}])).prompts[0]
    keys = {m: answer_key(parse_target(str(m)), prompt, Settings()) for m in (gguf, folder)}
    assert keys == {m: answer_key(parse_target(str(m)), prompt, Settings()) for m in (gguf, folder)}
    gguf.write_bytes(b"GGUF second, exported again")
    (folder / "model.safetensors").write_bytes(b"trained again")
    os.utime(folder / "model.safetensors", ns=(1, 1))  # same size would do: the time differs
    for model, before in keys.items():
        assert answer_key(parse_target(str(model)), prompt, Settings()) != before
    # names that are no path keep their key: a hub id, a fine-tuned model's id
    assert parse_target("ft:SmolLM2-135M-Instruct::ftjob-1").key() == "local||ft:SmolLM2-135M-Instruct::ftjob-1"


def test_the_cache_is_never_an_input_file_or_a_foreign_one(tmp_path, capsys):
    valid = _jsonl(tmp_path / "v.jsonl", [{"prompt": "Hi", "completion": " Yo"}])
    before = valid.read_bytes()
    for command in (["eval", "m"], ["record", "m", "-o", str(tmp_path / "g.jsonl")]):
        assert main([*command, "--data", str(valid), "--cache", str(tmp_path / "." / "v.jsonl")]) == 1
        assert "is the --data file" in capsys.readouterr().err
    golden = _jsonl(tmp_path / "golden.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}])
    assert main(["eval", "m", "--reference", str(golden), "--cache", str(golden)]) == 1
    assert "is the --reference file" in capsys.readouterr().err
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\n", encoding="utf-8")
    assert main(["eval", "m", "--data", str(valid), "--cache", str(notes)]) == 1
    assert f"{notes}:1: not an answers cache" in capsys.readouterr().err
    assert valid.read_bytes() == before and notes.read_text() == "my notes\n"


def test_an_answer_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(_entry("a", "kept") + "\n" + _entry("b", "cut")[:30], encoding="utf-8")  # killed
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


def test_remote_faults_are_retried_and_answers_are_never_asked_twice(tmp_path, capsys):
    valid = _jsonl(
        tmp_path / "v.jsonl",
        [
            {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"echo q{i}"}]}
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
    """The real command, killed while answers arrive, then run again: no prompt is asked twice."""
    valid = _jsonl(
        tmp_path / "v.jsonl",
        [
            {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"echo q{i}"}]}
            for i in range(12)
        ],
    )
    cache = tmp_path / "answers.jsonl"
    with FakeOpenAI() as fake:
        fake.answer = lambda messages: "echo " + messages[-1]["content"]
        fake.chat_delay = 0.3
        args = [CONVTUNE, "eval", f"{MODEL}@{fake.url}", "--data", str(valid), "--cache", str(cache)]
        args += ["--concurrency", "2", "--json"]
        env = dict(os.environ, OPENAI_API_KEY=fake.key)
        run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            not cache.exists() or len(cache.read_text().splitlines()) < 3
        ):
            time.sleep(0.05)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        kept = len(cache.read_text().splitlines())
        assert 3 <= kept < 12
        fake.chat_delay = 0.0
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        asked = [r for r in fake.requests if r["path"].endswith("/chat/completions")]
        questions = [r["json"]["messages"][-1]["content"] for r in asked]
        # each prompt asked once, but for the ones in flight when the process died
        assert len(set(questions)) == 12 and len(questions) <= 12 + 2
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
    assert 0 < model["valid_loss"] < 6 and model["valid_mean_token_accuracy"] > 0.2
    assert all(model["metrics"][g] is not None for g in ("fuzzy_match", "bleu", "rouge_l"))
