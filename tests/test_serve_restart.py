"""Jobs outlive `convtune serve`: a server killed mid-training leaves its jobs running, and a
server started after a machine restart (server and workers all killed) queues the waiting jobs
again and resumes the running one from its checkpoint. Real processes, the tiny model.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from convtune import PrepareOptions, prepare
from convtune.local.database import database_path
from convtune.local.local_service import LocalService
from convtune.local.process import process_alive

from .conftest import EXAMPLE
from .processes import go_on, stop_unlocked
from .servers import Conformance, serve, wait_for
from .tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def train(tmp_path_factory) -> Path:
    out = prepare(EXAMPLE, tmp_path_factory.mktemp("data"), PrepareOptions(force=True))
    return Path(out.outputs[0])


def messages(client, job_id: str) -> list[str]:
    events = client.get(f"fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()
    return [e["message"] for e in events["data"]]


def status(client, job_id: str) -> str:
    return client.get(f"fine_tuning/jobs/{job_id}").json()["status"]


@pytest.fixture
def workers():
    """{job id: worker pid} of the workers a test stops (SIGSTOP): killed at its end if still
    there, so that a test that fails midway leaves no stopped worker behind."""
    pids: dict[str, int] = {}
    yield pids
    for job, pid in pids.items():
        if process_alive(pid, job):
            os.killpg(pid, signal.SIGKILL)


def last_step(store, job_id: str) -> int:
    steps = [e.data["step"] for _, e in store.events_since(job_id) if e.type == "metrics"]
    return max(steps, default=0)


def test_jobs_survive_restarts_of_the_server_and_of_the_machine(tmp_path, tiny, train, workers):
    conformance = Conformance()
    home = tmp_path / "home"
    with serve(home, "--concurrency", "1") as first, conformance.client(first) as client:
        file_id = client.post(
            "files",
            data={"purpose": "fine-tune"},
            files={"file": (train.name, train.read_bytes())},
        ).json()["id"]

        def create(**hyperparameters) -> str:
            body = {
                "model": str(tiny),
                "training_file": file_id,
                "hyperparameters": hyperparameters,
            }
            response = client.post("fine_tuning/jobs", json=body)
            assert response.status_code == 200, response.text
            return response.json()["id"]

        running = create(n_epochs=4, batch_size=8)  # 13 steps an epoch, a checkpoint each
        waiting = create(n_epochs=1, batch_size=8)
        wait_for(lambda: client.get(f"fine_tuning/jobs/{running}/checkpoints").json()["data"])
        wait_for(lambda: any("Waiting for a free slot" in m for m in messages(client, waiting)))
        assert status(client, waiting) == "queued"

        # the server dies alone. The running worker is held still meanwhile (SIGSTOP), so that
        # it cannot finish before the new server is up, however slow the machine is today.
        store = LocalService(home).store
        pids = workers
        pids.update({job: store.job_runtime(job)["pid"] for job in (running, waiting)})
        stop_unlocked(pids[running], database_path(home))
        held_at = last_step(store, running)
        first.process.kill()
        first.process.wait(timeout=30)
    with serve(home, "--concurrency", "1") as second, conformance.client(second) as client:
        # the new server just sees the workers: nothing restarted, the jobs where they were
        assert status(client, running) == "running" and status(client, waiting) == "queued"
        assert "after the restart" not in second.log()
        go_on(pids[running])  # and the worker trains on under the new server
        wait_for(lambda: last_step(store, running) > held_at)

        # the machine restarts: server and workers gone at once (the running job held still
        # again first, so that it is surely running when it dies). The waiting worker dies
        # first: alive a moment longer than the running one, it would take the slot a dead
        # worker no longer holds, and be resumed, not restarted.
        stop_unlocked(pids[running], database_path(home))
        second.process.kill()
        second.process.wait(timeout=30)
        for job in (waiting, running):
            os.killpg(pids[job], signal.SIGKILL)
        for job, pid in pids.items():
            wait_for(lambda job=job, pid=pid: not process_alive(pid, job), timeout=30)
    with serve(home, "--concurrency", "1") as third, conformance.client(third) as client:
        log = third.log()
        assert f"job {running} resumed after the restart" in log
        assert f"job {waiting} restarted after the restart" in log
        for job in (running, waiting):
            done = wait_for(
                lambda job=job: (
                    (j := client.get(f"fine_tuning/jobs/{job}").json())["finished_at"] and j
                ),
                timeout=300,
            )
            assert done["status"] == "succeeded", done["error"]
            assert done["fine_tuned_model"]
        said = " ".join(messages(client, running))
        assert "resuming from checkpoint at step" in said

        # one at a time, still, oldest first: the waiting job started once the resumed one ended
        def when(job: str, text: str) -> int:
            events = client.get(f"fine_tuning/jobs/{job}/events", params={"limit": 1000}).json()
            return max(e["created_at"] for e in events["data"] if text in e["message"])

        assert when(waiting, "Fine-tuning job started") >= when(running, "successfully completed")
    assert conformance.checked > 0
