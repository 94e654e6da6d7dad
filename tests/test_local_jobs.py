"""Local jobs end to end with real processes: train, detach, follow, cancel, kill, resume, chat.

A tiny random model made on the fly stands in for SmolLM2 (tests/tiny_models.py), so each job
takes seconds; every job really runs in its own worker process, started by the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from convtune import ExampleOptions, PrepareOptions, prepare
from convtune.local.local_service import LocalService
from convtune.service.contract import ChatRequest, JobRequest
from convtune.service.training_options import TrainOptions

from .conftest import EXAMPLE, ROOT
from .processes import popen_ctrl_c
from .servers import wait_for, wait_for_job
from .tiny_models import make_tiny_model

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("data")
    chat = prepare(EXAMPLE, out / "chat", PrepareOptions(force=True))
    legacy = prepare(
        EXAMPLE,
        out / "legacy",
        PrepareOptions(force=True, examples=ExampleOptions(format="prompt-completion")),
    )
    bad = out / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        '{"messages": [{"role": "robot", "content": "beep"}]}\n',
        encoding="utf-8",
    )
    return {
        "train": Path(chat.outputs[0]),
        "valid": Path(chat.outputs[1]),
        "legacy": Path(legacy.outputs[0]),
        "bad": bad,
    }


def convtune(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CONVTUNE, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw
    )


def job_id_from(output: str) -> str:
    return next(word for word in output.split() if word.startswith("ftjob-"))


def training(service: LocalService, job_id: str) -> bool:
    """True once the job has done a training step (it has a metrics event)."""
    return any(e.type == "metrics" for e in service.jobs.list_events(job_id, limit=50))


@pytest.fixture
def cli(capsys):
    """cli(*args): a quick command through `main()` in this process: `chat` in a process of its
    own would import torch again (seconds); jobs and follow run the real `convtune`."""
    from convtune.cli.main import main

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_train_detach_follow_chat_delete(tiny, data, isolated_home, cli):
    result = convtune(
        "train",
        data["train"],
        "--validation-file",
        data["valid"],
        "--model",
        tiny,
        "--n-epochs",
        "2",
        "--batch-size",
        "8",  # about 12 steps an epoch: the job ends in seconds
        "--suffix",
        "nimbus",
        "--detach",
    )
    assert result.returncode == 0, result.stderr
    assert "Step " not in result.stdout  # --detach returns at once, the job runs on
    job_id = job_id_from(result.stdout)
    followed = convtune("follow", job_id)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "Files validated" in followed.stdout and "Step " in followed.stdout
    model_id = f"ft:{tiny.name}:nimbus:{job_id}"
    assert model_id in followed.stdout and f"convtune chat {model_id}" in followed.stdout

    shown = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert shown["status"] == "succeeded" and shown["fine_tuned_model"] == model_id
    assert shown["hyperparameters"]["n_epochs"] == 2
    assert shown["trained_tokens"] > 0 and len(shown["result_files"]) == 1
    service = LocalService()
    assert len(service.jobs.list_checkpoints(job_id)) == 2  # one per epoch
    results = service.files.path(shown["result_files"][0]).read_text().splitlines()
    assert results[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(results) > 2

    listed = cli("models", "list", "--json")
    assert model_id in [m["id"] for m in json.loads(listed.stdout)["data"]]
    reply = "".join(
        service.chat.create(
            ChatRequest(
                model_id, [{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
            )
        )
    )
    assert isinstance(reply, str)
    chat = cli("chat", model_id, "--message", "Hello", "--max-tokens", "5")
    assert chat.returncode == 0, chat.stderr

    folder = Path(service.models.record(model_id)["path"]).parent
    assert (folder / "merged" / "config.json").exists() and (folder / "adapter").exists()
    assert cli("models", "delete", model_id, "--yes").returncode == 0
    assert not folder.exists()
    assert cli("models", "delete", model_id, "--yes").returncode == 1


def test_bad_file_fails_in_validation_before_any_model_loads(tiny, data, isolated_home):
    result = convtune("train", data["bad"], "--model", tiny)
    assert result.returncode == 1
    assert "line 2" in result.stdout and "role" in result.stdout
    # a resume would read the same file: the way on is to fix it
    assert "convtune check FILE" in result.stdout and "Resume it" not in result.stdout
    service = LocalService()
    [job] = service.jobs.list()
    assert job.status == "failed" and job.error.param == "training_file"
    messages = [e.message for e in service.jobs.list_events(job.id, limit=100)]
    assert not any(m.startswith("Training ") for m in messages)  # no model was loaded


def test_cancel_stops_the_worker(tiny, data, isolated_home):
    service = LocalService()
    job = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=service.files.upload(data["train"]).id,
            options=TrainOptions(n_epochs=50),
        )
    )
    wait_for_job(service, job.id, lambda: training(service, job.id))
    pid = service.store.job_runtime(job.id)["pid"]
    result = convtune("jobs", "cancel", job.id, "--yes")
    assert result.returncode == 0, result.stderr
    job = service.jobs.get(job.id)
    assert job.status == "cancelled" and job.finished_at
    wait_for(
        lambda: (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
        )
    )
    assert convtune("jobs", "cancel", job.id, "--yes").returncode == 1  # already cancelled


def test_killed_worker_fails_then_resumes_from_checkpoint(tiny, data, isolated_home):
    service = LocalService()
    job = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=service.files.upload(data["train"]).id,
            options=TrainOptions(n_epochs=3, batch_size=8),  # checkpoints at 13, 26, 39
        )
    )
    wait_for_job(service, job.id, lambda: service.jobs.list_checkpoints(job.id))  # two epochs left
    pid = service.store.job_runtime(job.id)["pid"]
    os.killpg(pid, signal.SIGKILL)
    failed = wait_for(lambda: (j := service.jobs.get(job.id)).status == "failed" and j)
    assert "stopped unexpectedly" in failed.error.message
    step = service.jobs.list_checkpoints(job.id)[0].step_number
    resumed = convtune("jobs", "resume", job.id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"from checkpoint at step {step}" in resumed.stdout
    assert service.jobs.get(job.id).status == "succeeded"


def test_ctrl_c_detaches_and_the_job_goes_on(tiny, data, isolated_home):
    service = LocalService()
    job = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=service.files.upload(data["train"]).id,
            options=TrainOptions(n_epochs=3, batch_size=4),  # ~70 steps: seconds after Ctrl-C
        )
    )
    follower = popen_ctrl_c([CONVTUNE, "follow", job.id], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:  # line by line, as the follower prints them
        for line in follower.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # Ctrl-C once the follower shows the training (not while it starts: that is no detach)
    wait_for(lambda: any("Step " in line for line in lines) or follower.poll() is not None)
    follower.send_signal(signal.SIGINT)
    follower.wait(timeout=60)
    reader.join(timeout=10)
    out = "".join(lines)
    assert "Detached" in out and f"convtune follow {job.id}" in out, out
    assert follower.returncode == 0
    assert service.jobs.get(job.id).status in ("running", "succeeded")
    done = wait_for(lambda: (j := service.jobs.get(job.id)).done and j, timeout=300)
    assert done.status == "succeeded", done.error
    metrics = [e.data for e in service.jobs.list_events(job.id, limit=500) if e.type == "metrics"]
    [total] = {m["total_steps"] for m in metrics}
    assert total > 40 and max(m["step"] for m in metrics) == total  # to the end, unfollowed


def test_legacy_data_trains_and_chat_speaks_its_protocol(tiny, data, isolated_home):
    service = LocalService()
    job = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=service.files.upload(data["legacy"]).id,
            options=TrainOptions(n_epochs=1, batch_size=8),
        )
    )
    done = wait_for(lambda: (j := service.jobs.get(job.id)).done and j, timeout=300)
    assert done.status == "succeeded", done.error
    record = service.models.record(done.fine_tuned_model)
    assert record["format"] == "prompt-completion" and record["actors"] == ("Human", "AI")
    from convtune.local.chat import LocalChat

    chat = LocalChat.load(service, done.fine_tuned_model)
    prompt, stops = chat.prompt(
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert prompt == "Human: Hello\nAI: Hi\nHuman: Bye\nAI:" and stops == ["\nHuman:"]
    reply = "".join(
        chat.reply(
            ChatRequest(
                done.fine_tuned_model,
                [{"role": "user", "content": "Hello"}],
                max_tokens=20,
                temperature=0,
            )
        )
    )
    assert "\nHuman:" not in reply


def test_a_job_with_a_validation_file_keeps_its_best_answers_and_says_whether_it_learned(
    tiny, data, isolated_home
):
    """The base model answers held-out prompts first; the second half's epoch ends and the last
    step answer a probe; the best is kept; the verdict (with its intervals) ends the job, and
    `train` prints it. --keep-last and --no-learning-check turn each part off."""
    untied = make_tiny_model(isolated_home.parent / "untied", tied=False)  # says something
    # seed 3: here the probe keeps epoch 3, not the last (seeds 0-2 and 4-9 keep the last): the
    # path where the verdict leaves the probe's prompts out and the cache gets the probe's
    # answers. Another CPU's rounding may choose otherwise: both paths are checked below
    result = convtune(
        "train", data["train"], "--validation-file", data["valid"], "--model", untied,
        "--n-epochs", "4", "--batch-size", "8", "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Did it learn?" in result.stdout and "validation prompts)" in result.stdout
    service = LocalService()
    [job] = service.jobs.list()
    events = list(reversed(service.jobs.list_events(job.id, limit=1000)))
    messages = [e.message for e in events]
    assert any(m.startswith("Answered 25 held-out validation prompts") for m in messages)
    probes = [e.data["answer_probe"] for e in events if "answer_probe" in e.data]
    steps = {c.step_number for c in service.jobs.list_checkpoints(job.id)}
    assert len(probes) >= 2 and {p["step"] for p in probes} <= steps
    assert all(0 <= p["means"]["fuzzy_match"] <= 1 for p in probes)
    [kept] = [m for m in messages if m.startswith("Keeping the model of")]
    [found] = [e.data["verdict"] for e in events if "verdict" in e.data]
    # an earlier epoch kept: judged without the probe's 8 prompts; else on all 25
    assert found["prompts"] == (17 if "--keep-last" in kept else 25)
    assert not found["includes_probe"]
    assert [g["grader"] for g in found["graders"]] == ["fuzzy_match", "rouge_l"]
    for g in found["graders"]:
        d = g["difference"]
        assert d["low"] <= d["mean"] <= d["high"]
        assert g["verdict"] in ("better", "worse", "no clear difference")
    assert messages.index(next(m for m in messages if m.startswith("Did it learn?"))) < (
        messages.index(next(m for m in messages if m.startswith("New fine-tuned model")))
    )
    # epochs and batch were given: auto chose the learning rate alone, and said so
    [auto] = [m for m in messages if m.startswith("auto chose")]
    assert (
        auto.startswith("auto chose learning_rate_multiplier 10 (LoRA") and "n_epochs" not in auto
    )

    # the job's answers are in eval's cache: `convtune eval BASE FT --max-tokens 48` asks nothing
    from convtune.evaluation import AnswerCache, Settings, Target, ask, read_prompts
    from convtune.evaluation.answers import default_cache_path

    cache = AnswerCache(default_cache_path(isolated_home))
    prompts = read_prompts(data["valid"]).prompts
    assert job.model == "untied"  # the base model's id here (as models list names it)
    for model in (job.model, job.fine_tuned_model):
        answers = ask(service, Target(model, model), prompts, Settings(max_tokens=48), cache)
        assert all(a.cached for a in answers) and len(answers) == 25, model

    quiet = convtune(
        "train", data["train"], "--validation-file", data["valid"], "--model", untied,
        "--n-epochs", "2", "--batch-size", "8", "--keep-last", "--no-learning-check",
    )  # fmt: skip
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "Did it learn?" not in quiet.stdout
    newest = service.jobs.list()[0]
    said = [e.message for e in service.jobs.list_events(newest.id, limit=1000)]
    assert not any("held-out" in m or m.startswith(("Keeping", "Did it learn?")) for m in said)
