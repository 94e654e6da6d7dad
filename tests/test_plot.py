"""Pictures: the loss of a real local job, OpenAI-shaped results files, the token histogram.

One real job on the tiny model (tests/tiny_models.py) is trained once for the module; the rest
uses results files and fake services shaped as OpenAI's API answers. The PNGs are opened again
and the figures' axes, lines and labels checked: what a reader would look at.
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from convtune import PrepareOptions, check_file, prepare
from convtune.local.job_spec import JobSpec
from convtune.local.local_service import LocalService
from convtune.metrics.charts import loss_figure, save_png, smoothing_window
from convtune.metrics.job_metrics import NoMetrics, job_metrics
from convtune.metrics.results_csv import read_results
from convtune.metrics.tokens_chart import tokens_figure
from convtune.service.contract import JobRequest
from convtune.service.follow import follow
from convtune.service.objects import Job, JobEvent
from convtune.service.training_options import TrainOptions

from .conftest import EXAMPLE, ROOT
from .tiny_models import make_tiny_model

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")
EPOCHS, BATCH = 2, 8


def convtune(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CONVTUNE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(*args, cwd=None): the same command through `main()` in this process, for the checks
    after a first real run (a process of its own pays half a second of imports)."""
    from convtune.cli.main import main

    def run(*args, cwd=None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    report = prepare(EXAMPLE, tmp_path_factory.mktemp("data"), PrepareOptions(force=True))
    return {"train": Path(report.outputs[0]), "valid": Path(report.outputs[1])}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> dict:
    """One finished local job with a validation file: its home, id and expected steps."""
    tiny = make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    home = tmp_path_factory.mktemp("plot-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVTUNE_HOME", str(home))
        env.setenv("OMP_NUM_THREADS", "1")
        service = LocalService(home)
        job = service.jobs.create(
            JobRequest(
                model=str(tiny),
                training_file=service.files.upload(data["train"]).id,
                validation_file=service.files.upload(data["valid"]).id,
                options=TrainOptions(n_epochs=EPOCHS, batch_size=BATCH),
            )
        )
        *_, done = follow(service, job.id, poll=0.2)
    assert done.status == "succeeded", done.error
    examples = len(data["train"].read_text(encoding="utf-8").splitlines())
    # a step takes about BATCH examples; examples that share a prefix share a row, so an epoch
    # has at most ceil(examples / BATCH) steps (its metrics say how many)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVTUNE_HOME", str(home))
        events = LocalService(home).jobs.list_events(job.id, limit=10_000)
    [steps] = {e.data["total_steps"] for e in events if e.type == "metrics"}
    per_epoch = steps // EPOCHS
    assert per_epoch * EPOCHS == steps and 0 < per_epoch <= math.ceil(examples / BATCH)
    return {"home": home, "job": done, "per_epoch": per_epoch, "steps": steps}


@pytest.fixture
def job_home(trained, monkeypatch) -> dict:
    monkeypatch.setenv("CONVTUNE_HOME", str(trained["home"]))
    return trained


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def open_png(path: Path):
    image = imread(path)
    height, width = image.shape[:2]
    assert 500 <= height <= 800 and 900 <= width <= 1400, image.shape
    return image


# -- a real local job ----------------------------------------------------------------------------


def test_metrics_of_a_real_local_job(job_home):
    job, steps, per_epoch = job_home["job"], job_home["steps"], job_home["per_epoch"]
    metrics = job_metrics(LocalService(), job.id)
    assert [r["step"] for r in metrics.rows] == list(range(1, steps + 1))
    assert all(r["train_loss"] > 0 for r in metrics.rows)
    assert "results file" in metrics.source
    assert metrics.epoch_ends == [per_epoch * k for k in range(1, EPOCHS)]
    valid = [r for r in metrics.rows if "valid_loss" in r]
    assert valid and valid[-1]["step"] == steps  # the whole set is scored at the end
    assert metrics.model == job.fine_tuned_model


def test_loss_figure_of_a_real_job(job_home):
    job, steps, per_epoch = job_home["job"], job_home["steps"], job_home["per_epoch"]
    metrics = job_metrics(LocalService(), job.id)
    fig = loss_figure(metrics)
    ax = fig.axes[0]
    assert "step" in ax.get_xlabel()
    assert "loss" in ax.get_ylabel() and "nats per token" in ax.get_ylabel()
    assert job.id in fig.get_suptitle()
    lines = lines_by_label(ax)
    raw = lines["training loss (each step)"]
    assert list(raw.get_xdata()) == list(range(1, steps + 1))
    window = smoothing_window(steps)
    assert (
        window > 1 and len(lines[f"training loss (average of {window} steps)"].get_xdata()) == steps
    )
    n_valid = sum("valid_loss" in r for r in metrics.rows)
    assert len(lines["validation loss"].get_xdata()) == n_valid
    boundary = lines["end of an epoch"]
    assert list(boundary.get_xdata()) == [per_epoch + 0.5] * 2  # between two epochs' steps
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "validation loss" in legend and "end of an epoch" in legend


def test_cli_plot_writes_png_and_refuses_to_overwrite(job_home, tmp_path, cli):
    job_id = job_home["job"].id
    result = convtune("plot", job_id, cwd=tmp_path)  # the real command, in a process of its own
    assert result.returncode == 0, result.stderr
    png = tmp_path / f"{job_id}-loss.png"
    assert f"{job_id}-loss.png" in result.stdout and "steps" in result.stdout
    open_png(png)
    before = png.read_bytes()

    again = cli("plot", job_id, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr
    assert "--force" in again.stderr and png.read_bytes() == before

    other = tmp_path / "sub" / "loss.png"
    missing = cli("plot", job_id, "-o", other, cwd=tmp_path)  # a typo is no new folder
    assert missing.returncode == 1 and "no such folder" in missing.stderr
    other.parent.mkdir()
    assert cli("plot", job_id, "-o", other, cwd=tmp_path).returncode == 0
    assert cli("plot", job_id, "-o", other, "--force", cwd=tmp_path).returncode == 0
    open_png(other)
    assert not list(other.parent.glob(".*.tmp"))  # atomic: no temporary file left behind


def test_cli_plot_unknown_job_and_job_without_metrics(tmp_path, cli):
    unknown = cli("plot", "ftjob-nope", cwd=tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr.count("\n") == 1 and "ftjob-nope" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    service = LocalService()  # a job that never reached a training step (no worker started)
    file_id = service.files.upload(EXAMPLE).id
    service.store.add_job(
        Job(id="ftjob-empty", created_at=0, model="m", training_file=file_id), JobSpec()
    )
    empty = cli("plot", "ftjob-empty", cwd=tmp_path)
    assert empty.returncode == 1, empty.stdout
    assert empty.stderr.count("\n") == 1 and "no training metrics" in empty.stderr
    assert not list(tmp_path.glob("*.png"))


# -- results files and services shaped as OpenAI's -----------------------------------------------

OPENAI_CSV = (
    "\ufeffstep,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,"
    "train_mean_reward,full_valid_loss,full_valid_mean_token_accuracy\r\n"
    "1,2.51416,0.42,,,,,\r\n"
    "2,2.10235,0.5,1.98,0.51,,,\r\n"
    ",1.0,,,,,,\r\n"  # a row without a step: skipped
    "3,nan,0.55,,,,1.75,0.6\r\n"
    "4,1.20001,0.61,,,,,\r\n"
)


def test_read_results_openai_columns_empty_cells_bom_base64():
    rows = read_results(OPENAI_CSV.encode())
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0] == {"step": 1, "train_loss": 2.51416, "train_mean_token_accuracy": 0.42}
    assert rows[1]["valid_loss"] == 1.98 and rows[1]["valid_mean_token_accuracy"] == 0.51
    assert "train_loss" not in rows[2] and rows[2]["full_valid_loss"] == 1.75
    assert read_results(base64.b64encode(OPENAI_CSV.encode())) == rows
    assert read_results("not,a,results,file\n1,2,3,4\n") == []
    assert read_results(b"") == []


class FakeOpenAI:
    """`jobs.get`, `jobs.list_events` and `files.content` as OpenAI answers them (events newest
    first): the service is its own `jobs` and `files`."""

    @property
    def capabilities(self):
        from convtune.openai_backend import OpenAIService

        return OpenAIService.capabilities  # what the real backend declares

    def __init__(self, job: Job, files: dict[str, bytes], events: list[JobEvent]) -> None:
        self.job, self.contents, self.events = job, files, events[::-1]
        self.pages = 0
        self.jobs = self.files = self

    def get(self, job_id: str) -> Job:
        if job_id != self.job.id:
            from convtune.errors import NotFound

            raise NotFound(f"no fine-tuning job {job_id!r}")
        return self.job

    def content(self, file_id: str) -> bytes:
        return self.contents[file_id]

    def list_events(self, job_id: str, *, after: str | None = None, limit: int = 20):
        self.pages += 1
        start = 0 if after is None else [e.id for e in self.events].index(after) + 1
        return self.events[start : start + limit]


def openai_job(**kw) -> Job:
    return Job(id="ftjob-oa", created_at=0, model="gpt-4o-mini-2024-07-18", training_file="f", **kw)


def results_csv(steps: int) -> bytes:
    lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
    for s in range(1, steps + 1):
        loss = 0.6 + 2.0 * math.exp(-s / (steps / 5)) + 0.1 * math.sin(s * 7.3)
        valid = f"{loss + 0.2:.4f}" if s % max(1, steps // 30) == 0 else ""
        lines.append(f"{s},{loss:.5f},0.5,{valid},")
    return ("\n".join(lines) + "\n").encode()


def test_openai_job_3000_steps_from_results_file(tmp_path):
    job = openai_job(
        status="succeeded",
        result_files=["file-res"],
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 2},
        fine_tuned_model="ft:gpt-4o-mini-2024-07-18:org::abc",
    )
    service = FakeOpenAI(job, {"file-res": results_csv(3000)}, [])
    metrics = job_metrics(service, job.id)
    assert service.pages == 0  # the results file is enough: no paging through 3,000 events
    assert metrics.steps == 3000 and metrics.epoch_ends == [1000, 2000]
    fig = loss_figure(metrics)
    ax = fig.axes[0]
    lines = lines_by_label(ax)
    assert len(lines["training loss (each step)"].get_xdata()) == 3000
    assert (
        len(lines[f"training loss (average of {smoothing_window(3000)} steps)"].get_xdata()) == 3000
    )
    assert len(lines["validation loss"].get_xdata()) == 30
    assert list(lines["end of an epoch"].get_xdata()) == [1000, 1000]
    assert [t.get_text() for t in ax.child_axes[0].get_xticklabels()] == [
        "epoch 1",
        "epoch 2",
        "epoch 3",
    ]
    open_png(save_png(fig, tmp_path / "loss-3000.png"))


def test_three_steps_show_every_point_and_no_smoothing(tmp_path):
    rows = [{"step": s, "train_loss": 2.0 / s} for s in (1, 2, 3)] + [
        {"step": 3, "valid_loss": 1.1}
    ]
    fig = loss_figure(rows)
    lines = lines_by_label(fig.axes[0])
    raw = lines["training loss (each step)"]
    assert list(raw.get_xdata()) == [1, 2, 3] and raw.get_marker() == "o"
    assert not any(label.startswith("training loss (average") for label in lines)
    assert list(lines["validation loss"].get_xdata()) == [3]
    assert [int(t) for t in fig.axes[0].get_xticks() if 1 <= t <= 3] == [1, 2, 3]
    open_png(save_png(fig, tmp_path / "loss-3.png"))


def test_running_openai_job_from_metrics_events_pages_back():
    events = [
        JobEvent(
            f"ftevent-{i}", i, "info", f"Step {i}", "metrics", {"step": i, "train_loss": 1 / i}
        )
        for i in range(1, 251)
    ]
    events.insert(5, JobEvent("ftevent-msg", 5, "info", "Fine-tuning job started"))
    service = FakeOpenAI(openai_job(status="running"), {}, events)
    metrics = job_metrics(service, "ftjob-oa")
    assert [r["step"] for r in metrics.rows] == list(range(1, 251))
    assert service.pages == 3 and metrics.source == "metrics events"
    with pytest.raises(NoMetrics, match="no training metrics yet"):
        job_metrics(FakeOpenAI(openai_job(status="queued"), {}, []), "ftjob-oa")


def test_results_file_of_a_resumed_job_is_completed_from_events():
    events = [
        JobEvent(f"ftevent-{i}", i, "info", "", "metrics", {"step": i, "train_loss": 9.0})
        for i in range(1, 9)
    ]
    results = "step,train_loss\n" + "".join(f"{s},{s / 10}\n" for s in range(5, 9))
    job = openai_job(status="succeeded", result_files=["file-res"])
    metrics = job_metrics(FakeOpenAI(job, {"file-res": results.encode()}, events), job.id)
    assert [r["step"] for r in metrics.rows] == list(range(1, 9))
    assert [r["train_loss"] for r in metrics.rows] == [9.0] * 4 + [0.5, 0.6, 0.7, 0.8]
    assert metrics.source == "results file file-res + metrics events"


# -- the token histogram -------------------------------------------------------------------------


def test_tokens_figure_marks_the_limit_and_counts_examples_over_it(data, tmp_path):
    report = check_file(data["train"], max_tokens=100)
    over = sum(n for t, n in report.histogram.items() if t > 100)
    assert 0 < over < report.examples
    fig = tokens_figure(report)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("tokens per example") and ax.get_ylabel() == "examples"
    assert "conversations.train.jsonl" in fig.get_suptitle()
    [limit] = [line for line in ax.get_lines() if line.get_label().startswith("context limit")]
    assert list(limit.get_xdata()) == [100, 100]
    within, beyond = ax.containers
    assert sum(b.get_height() for b in within) == report.examples - over
    assert sum(b.get_height() for b in beyond) == over
    assert all(b.get_x() >= 100 for b in beyond if b.get_height())  # no bar straddles the limit
    legend = " | ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert f"over the limit: {over:,}" in legend and "context limit: 100 tokens" in legend
    open_png(save_png(fig, tmp_path / "tokens.png"))


def test_tokens_figure_far_limit_and_long_tail():
    counts = [50] * 900 + [80] * 95 + [90] * 4 + [5000]  # one example far out in the tail
    fig = tokens_figure(counts, limit=65_536)
    ax = fig.axes[0]
    assert not [line for line in ax.get_lines() if line.get_label().startswith("context")]
    assert ax.get_xlim()[1] < 1000  # the bulk is readable, not squeezed by one example
    legend = " | ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "65,536 tokens (far to the right" in legend
    assert "1 longer example off the chart (up to 5,000 tokens)" in legend
    with pytest.raises(NoMetrics):
        tokens_figure({})


def test_cli_check_plot(data, tmp_path, cli):
    png = tmp_path / "tokens.png"
    result = convtune("check", data["train"], "--plot", png, "--max-tokens", "100")
    assert result.returncode == 0, result.stderr
    assert f"Wrote {png}" in result.stdout
    open_png(png)
    again = cli("check", data["train"], "--plot", png)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert again.stdout == ""  # refused before checking anything
    assert cli("check", data["train"], "--plot", png, "--force").returncode == 0

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    nothing = cli("check", bad, "--plot", tmp_path / "none.png")
    assert nothing.returncode == 1 and "no token counts to plot" in nothing.stderr
    assert not (tmp_path / "none.png").exists()

    as_json = cli("check", data["train"], "--json", "--plot", tmp_path / "j.png")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["examples"] > 0


# -- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["prepare"], ["check"], ["plot"]])
def test_help_says_what_it_does_with_an_example(command, cli):
    result = cli(*command, "--help")
    assert result.returncode == 0
    text = result.stdout
    summary = text.split("\n\n")[1].strip()
    assert summary.endswith(".") and "\n" not in summary, summary  # one line
    assert "Example" in text and "  convtune " + (command[0] if command else "") in text


def test_a_picture_goes_to_a_png_in_a_folder_that_exists(tmp_path):
    from convtune.errors import ConvtuneError, OutputExistsError
    from convtune.metrics.charts import png_target

    assert png_target(tmp_path / "loss.png") == tmp_path / "loss.png"
    with pytest.raises(ConvtuneError, match="no such folder"):
        png_target(tmp_path / "typo" / "loss.png")  # not created: a typo is not a new folder
    assert not (tmp_path / "typo").exists()
    with pytest.raises(ConvtuneError, match=r"\.png"):
        png_target(tmp_path / "loss.txt")
    (tmp_path / "loss.png").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        png_target(tmp_path / "loss.png")
    assert png_target(tmp_path / "loss.png", force=True)
