"""The local backend's state: one SQLite database (WAL) in convtune's data directory.

Files, jobs, events, checkpoints and models, as rows. Every process (the CLI, a job's worker, the
server) opens its own connection; WAL lets a worker append events while a follower reads them.
Migrations are append-only and named, applied in order, recorded in `migrations`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

MIGRATIONS: list[tuple[str, str]] = [
    (
        "m001_initial",
        """
        CREATE TABLE files (
            id TEXT PRIMARY KEY, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
            purpose TEXT NOT NULL, created_at INTEGER NOT NULL, path TEXT NOT NULL,
            sha256 TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'processed'
        );
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, model TEXT NOT NULL,
            training_file TEXT NOT NULL, validation_file TEXT, status TEXT NOT NULL,
            hyperparameters TEXT NOT NULL, fine_tuned_model TEXT, finished_at INTEGER,
            error TEXT, result_files TEXT NOT NULL DEFAULT '[]', trained_tokens INTEGER,
            seed INTEGER NOT NULL DEFAULT 0, suffix TEXT, estimated_finish INTEGER,
            metadata TEXT, options TEXT NOT NULL DEFAULT '{}', pid INTEGER,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL,
            type TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_job ON events(job_id, seq);
        CREATE TABLE checkpoints (
            id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL, step_number INTEGER NOT NULL, epoch INTEGER NOT NULL,
            metrics TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL
        );
        CREATE TABLE models (
            id TEXT PRIMARY KEY, created INTEGER NOT NULL, owned_by TEXT NOT NULL,
            base TEXT NOT NULL, job_id TEXT, path TEXT NOT NULL, adapter_path TEXT,
            format TEXT NOT NULL DEFAULT 'chat', actors TEXT
        );
        """,
    ),
    (
        "m002_pause",
        """
        ALTER TABLE jobs ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0
        """,
    ),
    (
        "m003_launching",
        """
        ALTER TABLE jobs ADD COLUMN launching_until INTEGER
        """,
    ),
]
LAUNCH_GRACE = 60  # seconds a job may wait for its worker's pid before it counts as crashed


def database_path(home: Path) -> Path:
    """The local backend's database in convtune's data directory."""
    return home / "convtune.db"


class Store:
    """Typed access to the database; every write is one short transaction.

    Each thread gets its own connection (`db`), so the server can call the service from many
    threads at once: one connection shared by threads would interleave their transactions.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._migrate()

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        db = getattr(self._local, "db", None)
        if db is None:
            # used by this thread alone; `close()` may come from another one, hence the flag
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
            with self._guard:
                self._connections.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection (call it when no other thread uses the store)."""
        with self._guard:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at INTEGER)"
            )
            done = {r["name"] for r in db.execute("SELECT name FROM migrations")}
            for name, sql in MIGRATIONS:
                if name not in done:
                    for statement in sql.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT INTO migrations VALUES (?, ?)", (name, now()))

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
        return _file(row), Path(row["path"])

    def find_file(self, sha256: str, filename: str, purpose: str) -> FileObject | None:
        row = self.db.execute(
            "SELECT * FROM files WHERE sha256 = ? AND filename = ? AND purpose = ? ORDER BY created_at DESC",
            (sha256, filename, purpose),
        ).fetchone()
        return _file(row) if row else None

    def list_files(self, purpose: str | None = None) -> list[FileObject]:
        if purpose:
            rows = self.db.execute(
                "SELECT * FROM files WHERE purpose = ? ORDER BY created_at DESC, rowid DESC",
                (purpose,),
            )
        else:
            rows = self.db.execute("SELECT * FROM files ORDER BY created_at DESC, rowid DESC")
        return [_file(r) for r in rows]

    def delete_file(self, file_id: str) -> None:
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    # -- jobs --------------------------------------------------------------------------------

    def add_job(self, job: Job, options: dict[str, Any]) -> None:
        self.db.execute(
            """INSERT INTO jobs (id, created_at, model, training_file, validation_file, status,
               hyperparameters, seed, suffix, metadata, options, launching_until)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?)""",
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
                json.dumps(options),
                now() + LAUNCH_GRACE,  # its worker is about to start: not crashed meanwhile
            ),
        )

    def get_job(self, job_id: str) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def job_runtime(self, job_id: str) -> dict[str, Any]:
        """What only the local backend needs: options, worker pid, cancel and pause flags."""
        row = self.db.execute(
            "SELECT options, pid, cancel_requested, pause_requested, launching_until"
            " FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return {}
        return {
            "options": json.loads(row["options"]),
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
        jobs = [_job(r) for r in self.db.execute(sql, args)]
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
                if k in ("error", "result_files", "hyperparameters", "metadata", "options")
                and v is not None
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
        return [_event(r) for r in rows[:limit]], len(rows) > limit

    def events_since(self, job_id: str, seq: int = 0) -> list[tuple[int, JobEvent]]:
        """Oldest first, with their sequence numbers: what a follower has not seen yet."""
        rows = self.db.execute(
            "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
        )
        return [(r["seq"], _event(r)) for r in rows]

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


def _file(row: sqlite3.Row) -> FileObject:
    return FileObject(
        row["id"], row["bytes"], row["created_at"], row["filename"], row["purpose"], row["status"]
    )


def _job(row: sqlite3.Row) -> Job:
    error = json.loads(row["error"]) if row["error"] else None
    return Job(
        id=row["id"],
        created_at=row["created_at"],
        model=row["model"],
        training_file=row["training_file"],
        status=row["status"],
        validation_file=row["validation_file"],
        hyperparameters=json.loads(row["hyperparameters"]),
        fine_tuned_model=row["fine_tuned_model"],
        finished_at=row["finished_at"],
        error=JobError(**error) if error else None,
        result_files=json.loads(row["result_files"]),
        trained_tokens=row["trained_tokens"],
        seed=row["seed"],
        suffix=row["suffix"],
        estimated_finish=row["estimated_finish"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else None,
    )


def _event(row: sqlite3.Row) -> JobEvent:
    return JobEvent(
        row["id"],
        row["created_at"],
        row["level"],
        row["message"],
        row["type"],
        json.loads(row["data"]),
    )
