"""`convtune migrate`: an OpenAI fine-tune moved to an open model, tested end to end without
OpenAI. A real `convtune serve` plays OpenAI (it speaks the same API, through `--base-url`):
a fine-tune made there is migrated to the local backend, for real, with a tiny model. The fake
OpenAI service of the other tests gives the error paths: a refused key, a model already shut
down, a job whose training file cannot be read.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from convtune import PrepareOptions, prepare
from convtune.cli.main import main
from convtune.evaluation import read_prompts
from convtune.local.local_service import LocalService
from convtune.migration.state import Migration, folder_name
from convtune.openai_backend import OpenAIService
from convtune.service.contract import ChatRequest, JobRequest
from convtune.service.follow import follow
from convtune.service.objects import Job
from convtune.service.training_options import TrainOptions

from .conftest import EXAMPLE
from .fake_openai import KEY as FAKE_KEY
from .fake_openai import FakeOpenAI
from .servers import serve
from .tiny_models import make_tiny_model

KEY = "sk-migrate-test-71c4e0b9d2"


def run(*args) -> tuple[int, str]:
    """`convtune ARGS` through `main()` in this process: (exit code, stdout + stderr)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main([str(a) for a in args])
    return code, sink.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    report = prepare(EXAMPLE, tmp_path_factory.mktemp("data"), PrepareOptions(force=True))
    return {"train": Path(report.outputs[0]), "valid": Path(report.outputs[1])}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("openai-home"), keys=(KEY,)) as server:
        yield server


@pytest.fixture(scope="module")
def old_model(served, tiny, data) -> str:
    """A fine-tune made on the service playing OpenAI, as a user made theirs. A tiny random model
    may answer a prompt with its end token at once: the seed is the first (of a few tried, each
    deterministic) whose model says something to most of the prompts migrate asks."""
    service = OpenAIService(api_key=served.key, base_url=served.url, max_retries=0)
    training = service.files.upload(data["train"]).id
    prompts = read_prompts(data["valid"], limit=6).prompts
    for seed in range(6):
        job = service.jobs.create(
            JobRequest(
                model=str(tiny),
                training_file=training,
                suffix="support",
                seed=seed,
                options=TrainOptions(n_epochs=1, batch_size=8),
            )
        )
        finished = list(follow(service, job.id, poll=0.3))[-1]
        assert isinstance(finished, Job) and finished.status == "succeeded", finished.error
        said = [
            "".join(service.chat.create(ChatRequest(finished.fine_tuned_model,
                                                    p.chat_messages(), max_tokens=8,
                                                    temperature=0.0))).strip()
            for p in prompts
        ]  # fmt: skip
        if sum(map(bool, said)) >= 4:
            return finished.fine_tuned_model
    raise AssertionError("no seed gave a tiny model that answers")


def test_a_fine_tune_is_moved_to_an_open_model_and_a_rerun_redoes_nothing(
    served, old_model, tiny, data, tmp_path
):
    out = tmp_path / "migrations"
    args = ["migrate", old_model, "--base-url", served.url, "--api-key", served.key,
            "--data", data["valid"], "--model", tiny, "-o", out, "--limit", 6,
            "--max-tokens", 8]  # fmt: skip
    code, said = run(*args)
    assert code == 0, said
    m = Migration.open(out, old_model)
    assert m.folder == out / folder_name(old_model)
    assert {"inventory", "record", "retrain", "eval", "report"} <= set(m.done)

    found = m.done["inventory"]  # the job behind the model, as the service has it
    assert found["job"].startswith("ftjob-") and found["base_model"] == tiny.name
    assert found["hyperparameters"]["n_epochs"] == 1 and found["days_left"] is None

    recorded_text = Path(m.done["record"]["file"]).read_text(encoding="utf-8")
    recorded = [json.loads(line) for line in recorded_text.splitlines()]
    empty = m.done["record"]["empty_lines"]  # a tiny random model may answer nothing
    prompts = [p for p in read_prompts(data["valid"], limit=6).prompts if p.line not in empty]
    assert len(recorded) == len(prompts) == 6 - len(empty) > 0
    for example, prompt in zip(recorded, prompts, strict=True):
        assert example["messages"][:-1] == prompt.chat_messages()
        assert example["messages"][-1]["role"] == "assistant"

    local = LocalService()
    new = m.done["retrain"]["model"]
    job = local.jobs.get(m.done["retrain"]["job"])
    assert job.status == "succeeded" and job.fine_tuned_model == new
    assert job.hyperparameters["n_epochs"] == 1 and job.hyperparameters["batch_size"] == 8
    assert job.metadata["migrated_from"] == old_model

    agreement = json.loads(Path(m.done["eval"]["agreement"]["json"]).read_text())
    assert agreement["examples"] == len(prompts) and agreement["models"][0]["model"] == new
    references = json.loads(Path(m.done["eval"]["references"]["json"]).read_text())
    assert [d["a"] for d in references["differences"]] == [old_model] * 3
    page = (m.folder / "report.html").read_text()
    assert old_model in page and new in page and "convtune export" in page
    assert "Nothing on OpenAI was deleted" in page

    # a rerun asks nothing and trains nothing: every step is done
    jobs_before = len(local.jobs.list(limit=100))
    code, said = run(*args)
    assert code == 0, said
    assert said.count("done earlier") == 4
    assert len(local.jobs.list(limit=100)) == jobs_before

    # nothing on the service was deleted
    source = OpenAIService(api_key=served.key, base_url=served.url, max_retries=0)
    assert source.models.get(old_model).id == old_model
    assert source.jobs.get(found["job"]).status == "succeeded"

    # after the shutdown: the old model is gone, its recorded answers are not
    source.models.delete(old_model)
    m.forget("eval")
    code, said = run(*args)
    assert code == 0, said
    m = Migration.open(out, old_model)
    again = json.loads(Path(m.done["eval"]["references"]["json"]).read_text())
    assert again["differences"] == references["differences"]  # the same answers, from the cache


def test_a_refused_key_is_one_line_and_writes_nothing(tmp_path, data):
    with FakeOpenAI() as fake:
        code, said = run("migrate", "ft:gpt-4o-mini-2024-07-18:acme::AbC", "--base-url",
                         fake.url, "--api-key", "sk-wrong-0000000000", "--data", data["valid"],
                         "-o", tmp_path / "m")  # fmt: skip
    assert code == 1
    assert "refused the API key" in said and len(said.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_a_model_already_shut_down_says_so_at_its_step(tmp_path, data):
    with FakeOpenAI() as fake:
        training = fake.add_file("t.jsonl", data["train"].read_bytes())
        job = fake.add_job("gpt-4o-mini-2024-07-18", training["id"])
        fake.finish_job(job, "ft:gpt-4o-mini-2024-07-18:acme::Gone1")
        fake.models.pop("ft:gpt-4o-mini-2024-07-18:acme::Gone1", None)  # shut down
        code, said = run("migrate", "ft:gpt-4o-mini-2024-07-18:acme::Gone1", "--base-url",
                         fake.url, "--api-key", FAKE_KEY, "--data", data["valid"],
                         "-o", tmp_path / "m", "--limit", 2)  # fmt: skip
    assert code == 1
    assert "does not exist" in said and "Traceback" not in said
    m = Migration.open(tmp_path / "m", "ft:gpt-4o-mini-2024-07-18:acme::Gone1")
    assert m.has("inventory") and not m.has("record")  # it stopped at record, and says where
    assert m.done["inventory"]["shuts_down"] == "2027-01-14"


def test_a_training_file_that_cannot_be_read_asks_for_train(tmp_path, data):
    with FakeOpenAI() as fake:
        fake.downloadable = False  # as OpenAI: fine-tuning files are not downloadable
        training = fake.add_file("t.jsonl", data["train"].read_bytes())
        job = fake.add_job("gpt-4o-mini-2024-07-18", training["id"])
        fake.finish_job(job, "ft:gpt-4o-mini-2024-07-18:acme::Kept1")
        code, said = run("migrate", "ft:gpt-4o-mini-2024-07-18:acme::Kept1", "--base-url",
                         fake.url, "--api-key", FAKE_KEY, "--data", data["valid"],
                         "-o", tmp_path / "m", "--limit", 2)  # fmt: skip
    assert code == 1
    assert "cannot read the job's training data" in said and "--train FILE" in said
    m = Migration.open(tmp_path / "m", "ft:gpt-4o-mini-2024-07-18:acme::Kept1")
    assert m.has("record") and not m.has("retrain_started")  # recorded before it stopped


def test_all_moves_every_fine_tune_and_one_that_stops_does_not_stop_the_others(tmp_path, data):
    """--all: every fine-tuned model of the account's succeeded jobs, each in its own folder; a
    model that cannot go on (here: its training data cannot be read) is said, the next goes on,
    and the command exits 1."""
    with FakeOpenAI() as fake:
        fake.downloadable = False
        for name in ("One", "Two"):
            training = fake.add_file(f"{name}.jsonl", data["train"].read_bytes())
            job = fake.add_job("gpt-4o-mini-2024-07-18", training["id"])
            fake.finish_job(job, f"ft:gpt-4o-mini-2024-07-18:acme::{name}")
        fake.add_job("gpt-4o-mini-2024-07-18", training["id"])  # not finished: no model
        code, said = run("migrate", "--all", "--base-url", fake.url, "--api-key", FAKE_KEY,
                         "--data", data["valid"], "-o", tmp_path / "m", "--limit", 2)  # fmt: skip
    assert code == 1
    assert said.count("stopped: ") == 2 and said.count("--train FILE") == 2
    for name in ("One", "Two"):
        m = Migration.open(tmp_path / "m", f"ft:gpt-4o-mini-2024-07-18:acme::{name}")
        assert m.has("inventory") and m.has("record")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "gpt-4o-mini-2024-07-18-acme-One",
        "gpt-4o-mini-2024-07-18-acme-Two",
    ]


def test_a_dpo_fine_tune_is_retrained_with_dpo_and_its_beta():
    from convtune.migration.steps import mapped_options

    dpo = {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5, "beta": 0.3}
    kept = mapped_options(dpo, "openai", "dpo")
    assert (kept.method, kept.n_epochs, kept.batch_size, kept.beta) == ("dpo", 2, "auto", 0.3)
    assert kept.learning_rate_multiplier == "auto"  # OpenAI's is relative to its own base rate
    assert mapped_options(dpo, "auto", "dpo") == TrainOptions(method="dpo")
    supervised = mapped_options({"n_epochs": 3, "batch_size": 8}, "openai")
    assert (supervised.method, supervised.n_epochs, supervised.beta) == ("supervised", 3, "auto")
