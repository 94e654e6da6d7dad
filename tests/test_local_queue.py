"""The local service as a server runs it: a line of queued jobs, pause and resume, recovery after
a restart, files read back, models in use. Real worker processes on the tiny model.
"""

from __future__ import annotations

import os
import signal

import pytest

from convtune.errors import Conflict
from convtune.local.local_service import LocalService
from convtune.local.process import process_alive
from convtune.service.contract import JobRequest
from convtune.service.training_options import TrainOptions

from .servers import wait_for_job
from .test_local_jobs import convtune, data, tiny, training, wait_for  # noqa: F401  (module fixtures)


def _events(service: LocalService, job_id: str) -> list[tuple[int, str]]:
    return [(seq, e.message) for seq, e in service.jobs.events_since(job_id)]


def _seq(events: list[tuple[int, str]], text: str) -> int:
    return next(seq for seq, message in events if text in message)


def _waiting(service: LocalService, job_id: str) -> bool:
    """True once the job's worker waits in line for a slot."""
    return any("Waiting for a free slot" in m for _, m in _events(service, job_id))


def test_upload_reports_progress_and_reads_back(data):  # noqa: F811
    service = LocalService()
    seen: list[tuple[int, int]] = []
    uploaded = service.files.upload(
        data["train"], progress=lambda done, total: seen.append((done, total))
    )
    size = data["train"].stat().st_size
    assert seen[-1] == (size, size) and uploaded.bytes == size
    assert service.files.content(uploaded.id) == data["train"].read_bytes()
    again = service.files.upload(data["train"], progress=lambda d, t: seen.append((d, t)))
    assert again.id == uploaded.id and seen[-1] == (size, size)  # reused, still reported done


def test_jobs_wait_in_line_for_a_free_slot(tiny, data):  # noqa: F811
    service = LocalService(max_running=1)
    training_file = service.files.upload(data["train"]).id
    # the first runs for seconds (its worker loads torch, then 26 steps); the second waits
    first = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=training_file,
            options=TrainOptions(n_epochs=2, batch_size=8),
        )
    )
    second = service.jobs.create(
        JobRequest(model=str(tiny), training_file=training_file, options=TrainOptions(max_steps=2))
    )
    wait_for_job(service, second.id, lambda: _waiting(service, second.id))
    assert service.jobs.get(second.id).status == "queued"
    done = [
        wait_for(lambda j=j: (f := service.jobs.get(j.id)).done and f, 300) for j in (first, second)
    ]
    assert [j.status for j in done] == ["succeeded", "succeeded"]
    # the second started only once the first had finished: one job at a time
    finished = _seq(_events(service, first.id), "successfully completed")
    started = _seq(_events(service, second.id), "Fine-tuning job started")
    assert started > finished


def test_pause_keeps_its_place_and_resume_finishes(tiny, data):  # noqa: F811
    service = LocalService()
    job = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=service.files.upload(data["train"]).id,
            options=TrainOptions(n_epochs=1, batch_size=2),  # 52 steps: paused a few steps in
        )
    )
    wait_for_job(service, job.id, lambda: training(service, job.id))
    paused = service.jobs.pause(job.id)
    assert paused.status == "paused" and not paused.done
    [checkpoint, *_] = service.jobs.list_checkpoints(job.id)
    steps = [
        e.data["step"] for e in service.jobs.list_events(job.id, limit=500) if e.type == "metrics"
    ]
    assert checkpoint.step_number == max(steps)  # saved where it stopped, not at an epoch end
    assert service.jobs.get(job.id).status == "paused"  # no worker, yet not taken for crashed
    with pytest.raises(Conflict):
        service.jobs.pause(job.id)
    with pytest.raises(Conflict, match="in use"):  # resume will read it again
        service.files.delete(job.training_file)
    followed = convtune("follow", job.id)  # a paused job ends the follow: nothing will happen
    assert followed.returncode == 0, followed.stderr
    assert f"convtune jobs resume {job.id}" in followed.stdout

    resumed = service.jobs.resume(job.id)
    assert resumed.status in ("queued", "validating_files", "running")
    done = wait_for(lambda: (j := service.jobs.get(job.id)).done and j, 300)
    assert done.status == "succeeded", done.error
    messages = [m for _, m in _events(service, job.id)]
    assert f"resuming from step {checkpoint.step_number}" in " ".join(messages)
    after = [
        e.data["step"]
        for e in service.jobs.list_events(job.id, limit=500)
        if e.type == "metrics" and e.data["step"] > checkpoint.step_number
    ]
    assert min(after) == checkpoint.step_number + 1  # picks up at the next step
    # the results file covers the whole job, the steps before the pause included
    results = service.files.content(done.result_files[0]).decode().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in results] == list(range(1, max(after) + 1))


def test_recover_restarts_queued_and_resumes_running_jobs(tiny, data):  # noqa: F811
    service = LocalService(max_running=1)
    training_file = service.files.upload(data["train"]).id
    running = service.jobs.create(  # about 12 steps an epoch: killed with three epochs to go
        JobRequest(
            model=str(tiny),
            training_file=training_file,
            options=TrainOptions(n_epochs=4, batch_size=8),
        )
    )
    queued = service.jobs.create(
        JobRequest(model=str(tiny), training_file=training_file, options=TrainOptions(max_steps=2))
    )
    wait_for_job(service, queued.id, lambda: _waiting(service, queued.id))
    wait_for_job(service, running.id, lambda: service.jobs.list_checkpoints(running.id))
    assert service.store.get_job(queued.id).status == "queued"
    # the machine restarts: every worker is gone at once. The waiting one dies first: alive a
    # moment longer than the running one, it would take the slot a dead worker no longer holds.
    pids = {job.id: service.store.job_runtime(job.id)["pid"] for job in (queued, running)}
    for pid in pids.values():
        os.killpg(pid, signal.SIGKILL)
    for job_id, pid in pids.items():
        wait_for(lambda pid=pid, j=job_id: not process_alive(pid, j))

    restarted = LocalService(max_running=1)  # as `convtune serve` starts again
    actions = dict(restarted.jobs.recover())
    assert actions == {running.id: "resumed", queued.id: "restarted"}
    for job in (running, queued):
        done = wait_for(lambda j=job: (f := restarted.jobs.get(j.id)).done and f, 300)
        assert done.status == "succeeded", done.error
    assert restarted.jobs.recover() == []  # nothing left to do


def test_recover_can_fail_running_jobs_instead(tiny, data):  # noqa: F811
    service = LocalService()
    job = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=service.files.upload(data["train"]).id,
            options=TrainOptions(n_epochs=20),
        )
    )
    wait_for_job(service, job.id, lambda: service.store.get_job(job.id).status == "running")
    pid = service.store.job_runtime(job.id)["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid, job.id))
    assert LocalService().jobs.recover(resume_running=False) == [(job.id, "failed")]
    failed = service.jobs.get(job.id)
    assert failed.status == "failed" and failed.error.code == "worker_died"


def test_a_model_in_use_is_not_deleted(tiny, data):  # noqa: F811
    service = LocalService()
    training_file = service.files.upload(data["train"]).id
    first = service.jobs.create(
        JobRequest(model=str(tiny), training_file=training_file, options=TrainOptions(max_steps=2))
    )
    model_id = wait_for(lambda: (j := service.jobs.get(first.id)).done and j, 300).fine_tuned_model
    assert model_id
    further = service.jobs.create(
        JobRequest(model=model_id, training_file=training_file, options=TrainOptions(n_epochs=30))
    )
    assert further.model == model_id  # trains on top of the fine-tuned model
    with pytest.raises(Conflict, match="in use"):
        service.models.delete(model_id)
    service.jobs.cancel(further.id)
    # trained further, the new model is named after the base model, as OpenAI names them
    short = service.jobs.create(
        JobRequest(model=model_id, training_file=training_file, options=TrainOptions(max_steps=2))
    )
    done = wait_for(lambda: (j := service.jobs.get(short.id)).done and j, 300)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{tiny.name}::{short.id}"
    assert any(f"Training {model_id} on" in m for _, m in _events(service, short.id))
    service.models.delete(model_id)
    assert model_id not in [m.id for m in service.models.list()]


def test_a_job_being_launched_is_not_taken_for_crashed(tiny, data):  # noqa: F811
    """Between the job's row and its worker's pid there is a moment with no worker to see: a
    reader in that moment (another thread of the server, `jobs list`) must not fail the job."""
    from convtune.local.job_spec import JobSpec
    from convtune.local.store import new_id, now
    from convtune.service.objects import Job

    service = LocalService()
    job = Job(id=new_id("ftjob-"), created_at=now(), model="m", training_file="file-x")
    service.store.add_job(job, JobSpec())  # as create_job does, just before it starts the worker
    assert service.jobs.get(job.id).status == "validating_files"
    service.store.update_job(job.id, launching_until=now() - 1)  # its launcher died
    failed = service.jobs.get(job.id)
    assert failed.status == "failed" and failed.error.code == "worker_died"


def test_resumes_at_once_start_one_worker(tiny, data):  # noqa: F811
    import threading

    service = LocalService()
    job = service.jobs.create(
        JobRequest(
            model=str(tiny),
            training_file=service.files.upload(data["train"]).id,
            options=TrainOptions(n_epochs=1, batch_size=2),  # 52 steps: paused a few steps in
        )
    )
    wait_for_job(service, job.id, lambda: training(service, job.id))
    service.jobs.pause(job.id)
    outcomes: list[str] = []

    def resume() -> None:
        try:
            service.jobs.resume(job.id)
            outcomes.append("resumed")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=resume) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "conflict", "resumed"]
    done = wait_for(lambda: (j := service.jobs.get(job.id)).done and j, 300)
    assert done.status == "succeeded", done.error
    starts = [m for _, m in _events(service, job.id) if m.startswith("Resuming fine-tuning job")]
    assert len(starts) == 1


def test_identical_uploads_at_once_are_stored_once(data):  # noqa: F811
    from concurrent.futures import ThreadPoolExecutor

    service = LocalService()
    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(lambda _: service.files.upload(data["train"]).id, range(8)))
    assert len(ids) == 1 and len(service.files.list()) == 1


def test_events_after_an_unknown_id_is_an_error(tiny, data):  # noqa: F811
    from convtune.errors import OptionError

    service = LocalService()
    # jobs with events, whose workers stop at the file check: no model to load, no training
    bad_file = service.files.upload(data["bad"]).id
    job = service.jobs.create(JobRequest(model=str(tiny), training_file=bad_file))
    newest = service.jobs.list_events(job.id, limit=1)
    with pytest.raises(OptionError, match="no event"):
        service.jobs.list_events(job.id, after="ftevent-doesnotexist")
    other = service.jobs.create(JobRequest(model=str(tiny), training_file=bad_file))
    with pytest.raises(OptionError):  # an event of another job is no cursor here
        service.jobs.list_events(other.id, after=newest[0].id)
    for j in (job, other):
        wait_for(lambda j=j: service.jobs.get(j.id).done, 300)


def test_chat_keeps_one_copy_per_model_however_it_is_spelled(tiny):  # noqa: F811
    from convtune.service.contract import ChatRequest

    service = LocalService()
    spellings = [str(tiny), str(tiny).replace("/", "//", 1), f"{tiny.parent}/./{tiny.name}"]
    for model in spellings:
        request = ChatRequest(model, [{"role": "user", "content": "Hi"}], max_tokens=2)
        assert isinstance("".join(service.chat.create(request)), str)
    assert len(service.chat._models) == 1


def test_bad_hyperparameters_are_refused_before_any_upload(data):  # noqa: F811
    for option, value in (
        ("--n-epochs", "abc"),
        ("--n-epochs", "0"),
        ("--batch-size", "1.5"),
        ("--learning-rate-multiplier", "-1"),
    ):
        result = convtune("train", data["train"], option, value)
        assert result.returncode == 2, result.stderr
        assert f"Invalid value for '{option}'" in result.stderr and "auto" in result.stderr
        assert "Traceback" not in result.stderr
    assert LocalService().files.list() == []  # nothing was uploaded
