"""`service.jobs` of the local backend: each job a row of the store and a worker process.

Each job runs in its own process (`process.start_worker`: `python -m convtune.local.worker JOB`,
or under `torchrun` for several processes), started in a new session so that it survives the
terminal that started it. Every change of a job's status is one of the store's transitions; a
job whose worker is gone is marked failed when it is next read (or resumed by `recover`).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Conflict, NotFound, OptionError
from ..service.contract import JobRequest, Jobs
from ..service.objects import ACTIVE, RESUMABLE, Checkpoint, Job, JobError, JobEvent, new_id, now
from . import process
from .job_spec import JobSpec
from .store import LAUNCH_GRACE

if TYPE_CHECKING:
    from .local_service import LocalService

SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
RESUME_WAIT = 5.0  # seconds a resume waits for the job's previous worker to exit by itself


class LocalJobs(Jobs):
    service: LocalService

    def __init__(self, service: LocalService) -> None:
        super().__init__(service)
        self._children: dict[str, subprocess.Popen] = {}

    def create(self, request: JobRequest) -> Job:
        """Record the job and start its worker; validation happens there, before any model load."""
        from .base_models import BaseModelRef

        tuned = self.service.store.get_model(request.model)
        if tuned is not None:  # train further on a fine-tuned model, as OpenAI allows
            base = BaseModelRef(tuned["base"], "folder", tuned["path"])
        else:
            base = self.service.models.base_model(request.model)
        for file_id in filter(None, (request.training_file, request.validation_file)):
            self.service.files.path(file_id)  # NotFound early, with the id
        if request.suffix is not None and not SUFFIX.match(request.suffix):
            raise OptionError("the suffix may have up to 40 letters, digits, '-', '_' or '.'")
        if request.options.quantize_base != "none":  # refused now, not once the worker trains
            from .training.adapters import quantization_problem
            from .training.runtime import pick_device

            if (problem := quantization_problem(pick_device(0))) is not None:
                raise OptionError(f"quantize_base {request.options.quantize_base}: {problem}")
        job = Job(
            id=new_id("ftjob-"),
            created_at=now(),
            model=request.model if tuned is not None else base.name,
            training_file=request.training_file,
            validation_file=request.validation_file,
            hyperparameters=request.options.requested_hyperparameters(),
            seed=request.seed if request.seed is not None else int.from_bytes(os.urandom(3), "big"),
            suffix=request.suffix,
            metadata=request.metadata,
            method=request.options.method,
        )
        spec = JobSpec(options=request.options, model_source=base.source, base_name=base.name)
        self.service.store.add_job(job, spec)
        self.service.store.add_event(job.id, f"Created fine-tuning job: {job.id}")
        self._start(job.id, spec)
        return self.get(job.id)

    def _start(self, job_id: str, spec: JobSpec, *, resume: bool = False) -> None:
        limit = self.service.max_running
        if limit is not None and spec.max_running != limit:  # the slots of this server
            spec = spec.with_(max_running=limit)
            self.service.store.save_spec(job_id, spec)
        # before the worker exists: flags cleared (a resumed worker must not read an old pause),
        # no stale pid, and a grace period in which readers do not take the job for crashed
        self.service.store.update_job(
            job_id,
            pid=None,
            cancel_requested=0,
            pause_requested=0,
            launching_until=now() + LAUNCH_GRACE,
        )
        child = process.start_worker(
            job_id,
            self.service.home,
            self.job_dir(job_id) / "worker.log",
            process.Launch.of(spec.options),
            resume=resume,
        )
        self._children[job_id] = child
        self.service.store.update_job(job_id, pid=child.pid, launching_until=None)

    def job_dir(self, job_id: str) -> Path:
        return self.service.home / "jobs" / job_id

    def get(self, job_id: str) -> Job:
        job = self.service.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no fine-tuning job {job_id!r}")
        if job.status in ACTIVE and not self._worker_alive(job_id):
            job = self._mark_crashed(job_id)
        return job

    def list(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> list[Job]:
        jobs, _ = self.service.store.list_jobs(after=after, limit=limit, metadata=metadata)
        return [self.get(j.id) if j.status in ACTIVE else j for j in jobs]

    def cancel(self, job_id: str, *, grace: float = 30.0) -> Job:
        """Ask the worker to stop after its current step; kill it if it does not within `grace`."""
        job = self.get(job_id)
        if job.done:
            raise Conflict(f"job {job_id} is already {job.status}")
        self.service.store.update_job(job_id, cancel_requested=1)
        self._stop_worker(job_id, grace)
        self.service.store.mark_cancelled(job_id)  # a no-op if the worker marked it itself
        return self.get(job_id)

    def pause(self, job_id: str, *, grace: float = 60.0) -> Job:
        """Stop a running job after its current step, keeping its place in a checkpoint.

        The worker saves the checkpoint and marks the job `paused`; one that does not stop
        within `grace` is killed and resumes from its last epoch's checkpoint instead.
        """
        job = self.get(job_id)
        if job.status != "running":
            raise Conflict(f"job {job_id} is {job.status}; only running jobs pause")
        if self.service.store.job_runtime(job_id).get("cancel_requested"):
            raise Conflict(f"job {job_id} is being cancelled")
        self.service.store.update_job(job_id, pause_requested=1)
        self._stop_worker(job_id, grace)
        self.service.store.mark_paused(job_id)  # a no-op if the worker marked it itself
        return self.get(job_id)

    def _stop_worker(self, job_id: str, grace: float) -> None:
        """SIGTERM (the worker stops after its current step), SIGKILL after `grace` seconds."""
        pid = self.service.store.job_runtime(job_id).get("pid")
        if not (pid and self._worker_alive(job_id)):
            return
        if process.stop_group(pid, lambda: self._worker_alive(job_id), grace):
            process.reap(self._children.get(job_id))

    def resume(self, job_id: str) -> Job:
        """Continue a paused, failed or cancelled job from its last checkpoint (or the start)."""
        job = self.get(job_id)
        if job.status not in RESUMABLE:
            raise Conflict(
                f"job {job_id} is {job.status}; only paused, failed or cancelled jobs resume"
            )
        self._end_lingering_worker(job_id)
        # compare and set: of two resumes at once, one moves the job and starts a worker
        if not self.service.store.requeue(
            job_id,
            f"Resuming fine-tuning job from {self._resume_point(job_id)}",
            only_from=RESUMABLE,
        ):
            raise Conflict(f"job {job_id} is being resumed already")
        self._start(job_id, self.service.store.job_spec(job_id), resume=True)
        return self.get(job_id)

    def _end_lingering_worker(self, job_id: str) -> None:
        """A job's end is written by its worker, which may still be leaving: under torchrun over
        several machines, node 0's torchrun waits at exit (up to 5 minutes) for the others', and
        a node that was stopped never comes; meanwhile it holds the port the new run meets on.
        Its job has ended, so after `RESUME_WAIT` seconds it is stopped."""
        deadline = time.monotonic() + RESUME_WAIT
        while self._worker_alive(job_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        self._stop_worker(job_id, grace=10.0)

    def _resume_point(self, job_id: str) -> str:
        checkpoints = self.service.store.list_checkpoints(job_id)
        return f"checkpoint at step {checkpoints[0][0].step_number}" if checkpoints else "the start"

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> list[JobEvent]:
        self.get(job_id)
        return self.service.store.list_events(job_id, after=after, limit=limit)[0]

    def events_since(self, job_id: str, seq: int = 0) -> list[tuple[int, JobEvent]]:
        """Oldest first, with sequence numbers: a database query, no paging."""
        return self.service.store.events_since(job_id, seq)

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        self.get(job_id)
        return [c for c, _, _ in self.service.store.list_checkpoints(job_id)]

    def recover(self, *, resume_running: bool = True) -> list[tuple[str, str]]:
        """After a restart: start again the jobs whose worker is gone; (job id, what was done).

        Workers run in their own sessions and usually outlive a server restart; this is for a
        machine restart or a killed worker. Jobs still waiting (`validating_files`, `queued`)
        start over; running ones resume from their last checkpoint (or, with
        `resume_running=False`, are marked failed with the reason).
        """
        done: list[tuple[str, str]] = []
        for job_id in self.service.store.job_ids_with_status(ACTIVE):
            if self._worker_alive(job_id):
                continue
            job = self.service.store.get_job(job_id)
            assert job is not None
            spec = self.service.store.job_spec(job_id)
            if job.status in ("validating_files", "queued"):
                self.service.store.requeue(job_id, "Restarting the job: its worker had stopped")
                # resume: a job queued again after a pause has checkpoints to go on from
                self._start(job_id, spec, resume=True)
                done.append((job_id, "restarted"))
            elif resume_running:
                where = self._resume_point(job_id)
                self.service.store.requeue(job_id, f"Its worker had stopped: resuming from {where}")
                self._start(job_id, spec, resume=True)
                done.append((job_id, "resumed"))
            else:
                self._mark_crashed(job_id)
                done.append((job_id, "failed"))
        return done

    def _worker_alive(self, job_id: str) -> bool:
        runtime = self.service.store.job_runtime(job_id)
        if (runtime.get("launching_until") or 0) >= now():  # being started right now
            return True
        child = self._children.get(job_id)
        if child is not None and child.pid == runtime.get("pid"):
            return child.poll() is None
        pid = runtime.get("pid")
        return bool(pid) and process.process_alive(pid, job_id)

    def _mark_crashed(self, job_id: str) -> Job:
        # The worker writes its final status before exiting; re-read in case it just did.
        job = self.service.store.get_job(job_id)
        assert job is not None
        if job.status not in ACTIVE:
            return job
        last = process.last_line(self.job_dir(job_id) / "worker.log")
        reason = "the training process stopped unexpectedly (killed, or out of memory?)"
        if last:
            reason += f": {last}"
        self.service.store.mark_failed(job_id, JobError("worker_died", reason))
        job = self.service.store.get_job(job_id)
        assert job is not None
        return job
