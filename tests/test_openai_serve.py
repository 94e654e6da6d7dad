"""The openai backend against a real `convtune serve`: the real SDK, a real server, real training.

One server for the module (tests/servers.py starts `convtune serve --port 0`), a tiny random
model (tests/tiny_models.py) so that each job trains in seconds. First the library path
(`OpenAIService`), then the same flow through the real entry point:
`convtune train FILE --base-url URL --api-key KEY --model <tiny model folder>`, and the quick
commands after it through the same `main()` in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from convtune import PrepareOptions, prepare
from convtune.errors import Conflict, ConvtuneError, NotFound
from convtune.openai_backend import OpenAIService
from convtune.service.contract import ChatRequest, JobRequest
from convtune.service.follow import JobProgress, follow
from convtune.service.objects import Job
from convtune.service.training_options import TrainOptions

from .conftest import EXAMPLE, ROOT
from .servers import serve
from .tiny_models import make_tiny_model

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")
KEY = "sk-serve-test-4b8e2d6f0a1c"


def tag(**extra: str) -> dict[str, str]:
    """The metadata convtune sends: the user's, its tag and this data directory's id."""
    from convtune.state.home import installation_id

    return {**extra, "created_by": "convtune", "convtune_installation": installation_id()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    report = prepare(EXAMPLE, tmp_path_factory.mktemp("data"), PrepareOptions(force=True))
    return {"train": Path(report.outputs[0]), "valid": Path(report.outputs[1])}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("serve-home"), keys=(KEY,)) as server:
        yield server


def test_the_sdk_path_against_convtune_serve(served, tiny, data):
    service = OpenAIService(api_key=served.key, base_url=served.url, max_retries=0)
    sizes: list[int] = []
    train = service.files.upload(data["train"], progress=lambda done, total: sizes.append(done))
    assert train.status == "processed" and sizes[-1] == data["train"].stat().st_size
    assert service.files.upload(data["train"]).id == train.id  # identical: reused
    valid = service.files.upload(data["valid"])
    assert {f.id for f in service.files.list()} >= {train.id, valid.id}

    job = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=train.id,
            validation_file=valid.id,
            suffix="nimbus",
            seed=7,
            metadata={"team": "care"},
            options=TrainOptions(n_epochs=1, batch_size=8, learning_rate_multiplier=2.0),
        )
    )
    assert job.metadata == tag(team="care") and job.seed == 7
    assert job.hyperparameters == {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 2.0}

    progress = JobProgress()
    items = list(follow(service, job.id, poll=0.3))
    events, finished = items[:-1], items[-1]
    for event in events:
        progress.update(event)
    assert isinstance(finished, Job) and finished.status == "succeeded", finished.error
    assert len({e.id for e in events}) == len(events)  # each event once
    assert events[0].message.startswith("Created fine-tuning job")
    assert progress.total_steps > 0 and progress.step == progress.total_steps
    assert progress.train_loss is not None and progress.valid_loss is not None
    model = finished.fine_tuned_model
    assert model == f"ft:{tiny.name}:nimbus:{job.id}"

    [checkpoint] = service.jobs.list_checkpoints(job.id)  # one per epoch
    assert checkpoint.step_number == progress.total_steps
    csv = service.files.content(finished.result_files[0]).decode()
    assert csv.startswith("step,train_loss,train_accuracy,valid_loss")
    pieces = list(
        service.chat.create(
            ChatRequest(model, [{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0)
        )
    )
    assert pieces and all(isinstance(p, str) for p in pieces)

    owned = service.ownership()
    assert job.id in owned.jobs and owned.has_model(model)
    assert {train.id, valid.id, *finished.result_files} <= owned.files
    with pytest.raises(Conflict, match="base model"):
        service.models.delete(str(tiny))
    with pytest.raises(Conflict):
        service.jobs.cancel(job.id)  # already succeeded
    service.models.delete(model)
    with pytest.raises(NotFound):
        service.models.get(model)
    with pytest.raises(NotFound):
        service.jobs.get("ftjob-doesnotexist")

    wrong = OpenAIService(api_key="sk-not-this-one-93e1c7", base_url=served.url, max_retries=0)
    with pytest.raises(ConvtuneError) as caught:
        wrong.files.list()
    assert "API key" in str(caught.value) and "93e1c7" not in str(caught.value)


def convtune(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    result = subprocess.run(
        [CONVTUNE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )
    output = result.stdout + result.stderr
    assert KEY not in output and "4b8e2d6f0a1c" not in output and "Traceback" not in output
    return result


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(*args): `main(args)` in this process, for the quick commands (a process of its own
    pays a second or more to import the openai SDK); a CompletedProcess-like result."""
    from convtune.cli.main import main

    for name in [k for k in os.environ if k.upper().endswith("_PROXY")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert (
            KEY not in out + err
            and "4b8e2d6f0a1c" not in out + err
            and "Traceback" not in out + err
        )
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_train_through_the_cli_against_convtune_serve(served, tiny, data, tmp_path, cli):
    remote = ("--base-url", served.url, "--api-key", KEY)
    result = convtune(
        "train",
        data["train"],
        "--validation-file",
        data["valid"],
        "--backend",
        "openai",
        *remote,
        "--model",
        tiny,
        "--n-epochs",
        "1",
        "--batch-size",
        "8",
        "--suffix",
        "cli",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr  # convtune serve is not api.openai.com
    job_id = next(w for w in result.stdout.split() if w.startswith("ftjob-"))
    model = f"ft:{tiny.name}:cli:{job_id}"
    assert f"Fine-tuned model: {model}" in result.stdout
    assert f"convtune chat {model} --backend openai --base-url {served.url}" in result.stdout
    assert "Files validated" in result.stdout and "Step " in result.stdout

    followed = convtune("follow", job_id, *remote)  # a finished job: its events, once more
    assert followed.returncode == 0 and model in followed.stdout
    chat = cli("chat", model, "--message", "Hello", "--max-tokens", "5", *remote)
    assert chat.returncode == 0, chat.stderr
    csv = tmp_path / "results.csv"
    results = cli("jobs", "results", job_id, "-o", csv, *remote)
    assert results.returncode == 0 and csv.read_text().startswith("step,train_loss")
    listed = json.loads(cli("models", "list", "--json", *remote).stdout)
    assert model in [m["id"] for m in listed["data"]]
    assert all(m["id"].startswith("ft:") for m in listed["data"])  # base models when asked:
    every = json.loads(cli("models", "list", "--include-base", "--json", *remote).stdout)
    bases = {m["id"] for m in every["data"] if m["owned_by"] == "system"}
    assert bases == {"SmolLM2-135M-Instruct", tiny.name}

    deleted = cli("models", "delete", "--all", "--yes", *remote)
    assert deleted.returncode == 0 and model in deleted.stdout
    gone = cli("chat", model, "--message", "Hello", *remote)
    assert gone.returncode == 1 and len(gone.stderr.strip().splitlines()) == 1
    files = cli("files", "delete", "--all", "--yes", *remote)
    assert files.returncode == 0 and "Deleted" in files.stdout
    wrong = cli("jobs", "list", "--base-url", served.url, "--api-key", "sk-wrong-0f9e8d7c6b")
    assert wrong.returncode == 1 and "0f9e8d7c6b" not in wrong.stdout + wrong.stderr
