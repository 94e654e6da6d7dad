"""The local backend's state, typed: files, jobs (with their `JobSpec`), events, checkpoints
and models, as rows of the database (`database.py`: schema, connections, migrations).

Each job's status changes by one of the transitions here (`advance`, `requeue`, `mark_*`), each
one compare-and-set in a transaction, so that a worker, a server and a CLI acting on the same job
at once never undo each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import OptionError
from ..service.objects import (
    ACTIVE,
    STATUSES,
    TERMINAL,
    Checkpoint,
    FileObject,
    Job,
    JobError,
    JobEvent,
    ModelObject,
    new_id,
    now,
)
from .database import Database, event_from_row, file_from_row, job_from_row
from .job_spec import JobSpec

LAUNCH_GRACE = 60  # seconds a job may wait for its worker's pid before it counts as crashed


class Store(Database):
    """Typed access to the database; every write is one short transaction."""

    # -- files -------------------------------------------------------------------------------

    def add_file(
        self,
        filename: str,
        size: int,
        purpose: str,
        path: Path,
        sha256: str,
        file_id: str | None = None,
    ) -> FileObject:
        obj = FileObject(file_id or new_id("file-"), size, now(), filename, purpose)
        self.db.execute(
            "INSERT INTO files (id, filename, bytes, purpose, created_at, path, sha256) VALUES (?,?,?,?,?,?,?)",
            (obj.id, filename, size, purpose, obj.created_at, str(path), sha256),
        )
        return obj

    def get_file(self, file_id: str) -> tuple[FileObject, Path] | None:
        row = self.db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            return None
        return file_from_row(row), Path(row["path"])

    def find_file(self, sha256: str, filename: str, purpose: str) -> FileObject | None:
        row = self.db.execute(
            "SELECT * FROM files WHERE sha256 = ? AND filename = ? AND purpose = ? ORDER BY created_at DESC",
            (sha256, filename, purpose),
        ).fetchone()
        return file_from_row(row) if row else None

    def list_files(self, purpose: str | None = None) -> list[FileObject]:
        if purpose:
            rows = self.db.execute(
                "SELECT * FROM files WHERE purpose = ? ORDER BY created_at DESC, rowid DESC",
                (purpose,),
            )
        else:
            rows = self.db.execute("SELECT * FROM files ORDER BY created_at DESC, rowid DESC")
        return [file_from_row(r) for r in rows]

    def delete_file(self, file_id: str) -> None:
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    # -- jobs --------------------------------------------------------------------------------

    def add_job(self, job: Job, spec: JobSpec) -> None:
        self.db.execute(
            """INSERT INTO jobs (id, created_at, model, training_file, validation_file, status,
               hyperparameters, seed, suffix, metadata, options, launching_until, method)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (
                job.id,
                job.created_at,
                job.model,
                job.training_file,
                job.validation_file,
                job.status,
                json.dumps(job.hyperparameters),
                job.seed,
                job.suffix,
                json.dumps(job.metadata) if job.metadata is not None else None,
                json.dumps(spec.to_json()),
                now() + LAUNCH_GRACE,  # its worker is about to start: not crashed meanwhile
                job.method,
            ),
        )

    def get_job(self, job_id: str) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def job_spec(self, job_id: str) -> JobSpec:
        """What the job trains (`JobSpec`), however old the convtune that stored it."""
        row = self.db.execute(
            "SELECT options, hyperparameters FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return JobSpec()
        return JobSpec.from_json(json.loads(row["options"]), json.loads(row["hyperparameters"]))

    def save_spec(self, job_id: str, spec: JobSpec) -> None:
        self.db.execute(
            "UPDATE jobs SET options = ? WHERE id = ?", (json.dumps(spec.to_json()), job_id)
        )

    def job_runtime(self, job_id: str) -> dict[str, Any]:
        """The worker's state: its pid, the cancel and pause flags, its launch grace."""
        row = self.db.execute(
            "SELECT pid, cancel_requested, pause_requested, launching_until FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return {}
        return {
            "pid": row["pid"],
            "cancel_requested": bool(row["cancel_requested"]),
            "pause_requested": bool(row["pause_requested"]),
            "launching_until": row["launching_until"],
        }

    def job_ids_with_status(self, statuses: tuple[str, ...]) -> list[str]:
        """Oldest first: the order in which waiting jobs get a free slot."""
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(
            f"SELECT id FROM jobs WHERE status IN ({marks}) ORDER BY rowid", statuses
        )
        return [r["id"] for r in rows]

    def claim_slot(self, job_id: str, max_running: int, alive: Callable[[int, str], bool]) -> str:
        """Move a queued job to running if fewer than `max_running` jobs run and none waits
        longer; 'running', 'wait', or 'gone' (the job is no longer queued: cancelled...).

        One transaction, so two workers that ask at once never both take the last slot. Jobs
        whose worker is dead (`alive(pid, job_id)` false) neither hold a slot nor hold up the line.
        """
        with self.transaction() as db:
            rows = db.execute(
                "SELECT id, status, pid FROM jobs"
                f" WHERE status IN ({','.join('?' * len(ACTIVE))}) ORDER BY rowid",
                ACTIVE,
            ).fetchall()
            mine = next((r for r in rows if r["id"] == job_id), None)
            if mine is None or mine["status"] != "queued":
                return "gone"
            live = [r for r in rows if r["pid"] and alive(r["pid"], r["id"])]
            running = sum(1 for r in live if r["status"] == "running")
            # in line: every older job not yet running, still validating included (first come,
            # first served, however long each one's validation takes)
            ahead = [r["id"] for r in live if r["status"] != "running"]
            free = max_running - running
            if free <= 0 or job_id not in ahead[:free]:
                return "wait"
            self.update_job(job_id, status="running")
            return "running"

    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> tuple[list[Job], bool]:
        """Newest first, OpenAI's pagination: jobs created before the job `after`."""
        sql = "SELECT * FROM jobs"
        args: list[Any] = []
        if after is not None:
            pivot = self.db.execute("SELECT rowid FROM jobs WHERE id = ?", (after,)).fetchone()
            if pivot is not None:
                sql += " WHERE rowid < ?"
                args.append(pivot[0])
        sql += " ORDER BY rowid DESC"
        jobs = [job_from_row(r) for r in self.db.execute(sql, args)]
        if metadata:
            jobs = [
                j
                for j in jobs
                if j.metadata and all(j.metadata.get(k) == v for k, v in metadata.items())
            ]
        return jobs[:limit], len(jobs) > limit

    def update_job(self, job_id: str, **fields: Any) -> None:
        encoded = {
            k: (
                json.dumps(v.__dict__ if isinstance(v, JobError) else v)
                if k in ("error", "result_files", "hyperparameters", "metadata") and v is not None
                else v
            )
            for k, v in fields.items()
        }
        columns = ", ".join(f"{k} = ?" for k in encoded)
        self.db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*encoded.values(), job_id))

    def _set_status(
        self,
        job_id: str,
        status: str,
        *,
        unless: tuple[str, ...] = (),
        event: str | None = None,
        level: str = "info",
        **fields: Any,
    ) -> bool:
        """Move a job to `status` unless it is in one of `unless`; True if it moved.

        `event` and `fields` are written in the same transaction, so a follower that sees the
        final status has also seen the event that says why.
        """
        with self.transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] in unless:
                return False
            self.update_job(job_id, status=status, **fields)
            if event is not None:
                self.add_event(job_id, event, level=level)
            return True

    # -- status transitions: every change of a job's status is one of these ------------------

    def advance(self, job_id: str, status: str) -> bool:
        """The worker's own steps (validating_files, queued, running); False once the job has
        ended (cancelled meanwhile): the worker then stops."""
        return self._set_status(job_id, status, unless=TERMINAL)

    def requeue(self, job_id: str, event: str, *, only_from: tuple[str, ...] = ()) -> bool:
        """Back in line for a new worker (a resume, or a restart after a crash), with the event
        that says why. With `only_from`, a compare-and-set: of two resumes at once, one moves the
        job. The launch grace starts in the same transaction, so that nobody takes the job for
        crashed before its new worker has a pid."""
        unless = tuple(s for s in STATUSES if s not in only_from) if only_from else ()
        return self._set_status(
            job_id,
            "queued",
            unless=unless,
            event=event,
            error=None,
            finished_at=None,
            fine_tuned_model=None,
            launching_until=now() + LAUNCH_GRACE,
        )

    def mark_paused(self, job_id: str) -> bool:
        """Paused, keeping its place in a checkpoint (written by the worker or the canceller)."""
        return self._set_status(
            job_id, "paused", unless=(*TERMINAL, "paused"), event="Fine-tuning job paused"
        )

    def mark_cancelled(self, job_id: str) -> bool:
        return self._set_status(
            job_id,
            "cancelled",
            unless=TERMINAL,
            event="Fine-tuning job cancelled",
            finished_at=now(),
        )

    def mark_failed(self, job_id: str, error: JobError) -> bool:
        """Failed, with the error's message as the job's last event."""
        return self._set_status(
            job_id,
            "failed",
            unless=TERMINAL,
            event=error.message,
            level="error",
            error=error,
            finished_at=now(),
        )

    def mark_succeeded(self, job_id: str) -> bool:
        return self._set_status(
            job_id,
            "succeeded",
            unless=TERMINAL,
            event="The job has successfully completed",
            finished_at=now(),
            estimated_finish=None,
        )

    # -- events ------------------------------------------------------------------------------

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> JobEvent:
        event = JobEvent(new_id("ftevent-"), now(), level, message, type, data or {})
        self.db.execute(
            "INSERT INTO events (id, job_id, created_at, level, message, type, data) VALUES (?,?,?,?,?,?,?)",
            (event.id, job_id, event.created_at, level, message, type, json.dumps(event.data)),
        )
        return event

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[JobEvent], bool]:
        """Newest first, as OpenAI lists them; `after` is an event id (older events follow)."""
        sql = "SELECT * FROM events WHERE job_id = ?"
        args: list[Any] = [job_id]
        if after is not None:
            pivot = self.db.execute(
                "SELECT seq FROM events WHERE id = ? AND job_id = ?", (after, job_id)
            ).fetchone()
            if pivot is None:
                raise OptionError(
                    f"no event {after!r} in job {job_id}",
                    hint="after takes an event id of this job",
                )
            sql += " AND seq < ?"
            args.append(pivot[0])
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        rows = list(self.db.execute(sql, args))
        return [event_from_row(r) for r in rows[:limit]], len(rows) > limit

    def events_since(self, job_id: str, seq: int = 0) -> list[tuple[int, JobEvent]]:
        """Oldest first, with their sequence numbers: what a follower has not seen yet."""
        rows = self.db.execute(
            "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
        )
        return [(r["seq"], event_from_row(r)) for r in rows]

    # -- checkpoints -------------------------------------------------------------------------

    def add_checkpoint(
        self, job_id: str, step: int, epoch: int, metrics: dict[str, float], name: str, path: Path
    ) -> Checkpoint:
        ckpt = Checkpoint(new_id("ftckpt-"), now(), name, job_id, step, metrics)
        self.db.execute(
            "INSERT INTO checkpoints (id, job_id, created_at, step_number, epoch, metrics, name, path) VALUES (?,?,?,?,?,?,?,?)",
            (ckpt.id, job_id, ckpt.created_at, step, epoch, json.dumps(metrics), name, str(path)),
        )
        return ckpt

    def list_checkpoints(self, job_id: str) -> list[tuple[Checkpoint, Path, int]]:
        """Newest first: (checkpoint, folder, epoch)."""
        rows = self.db.execute(
            "SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step_number DESC", (job_id,)
        )
        return [
            (
                Checkpoint(
                    r["id"],
                    r["created_at"],
                    r["name"],
                    job_id,
                    r["step_number"],
                    json.loads(r["metrics"]),
                ),
                Path(r["path"]),
                r["epoch"],
            )
            for r in rows
        ]

    # -- models ------------------------------------------------------------------------------

    def add_model(
        self,
        model_id: str,
        base: str,
        job_id: str | None,
        path: Path,
        adapter_path: Path | None,
        fmt: str,
        actors: tuple[str, str] | None,
    ) -> ModelObject:
        obj = ModelObject(model_id, now(), "convtune")
        self.db.execute(
            "INSERT OR REPLACE INTO models (id, created, owned_by, base, job_id, path, adapter_path, format, actors) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                model_id,
                obj.created,
                obj.owned_by,
                base,
                job_id,
                str(path),
                str(adapter_path) if adapter_path else None,
                fmt,
                json.dumps(actors) if actors else None,
            ),
        )
        return obj

    def get_model(self, model_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["actors"] = tuple(json.loads(row["actors"])) if row["actors"] else None
        return data

    def list_models(self) -> list[ModelObject]:
        rows = self.db.execute("SELECT * FROM models ORDER BY created DESC, rowid DESC")
        return [ModelObject(r["id"], r["created"], r["owned_by"]) for r in rows]

    def delete_model(self, model_id: str) -> None:
        self.db.execute("DELETE FROM models WHERE id = ?", (model_id,))
