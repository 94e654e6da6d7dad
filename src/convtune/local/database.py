"""The local backend's SQLite database: its schema, its connections, and its rows as objects.

One database (WAL) in convtune's data folder. Every process (the CLI, a job's worker, the
server) opens its own connection, and every thread its own: WAL lets a worker append events
while a follower reads them. Migrations are append-only and named, applied in order, recorded in
`migrations`. `Store` (store.py) is the typed access built on this.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..service.objects import FileObject, Job, JobError, JobEvent, now

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
    (
        "m004_method",
        """
        ALTER TABLE jobs ADD COLUMN method TEXT NOT NULL DEFAULT 'supervised'
        """,
    ),
]


def database_path(home: Path) -> Path:
    """The local backend's database in convtune's data directory."""
    return home / "convtune.db"


class Database:
    """The connections: each thread gets its own (`db`), so the server can call the service
    from many threads at once; one connection shared by threads would interleave their
    transactions."""

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


def file_from_row(row: sqlite3.Row) -> FileObject:
    return FileObject(
        row["id"], row["bytes"], row["created_at"], row["filename"], row["purpose"], row["status"]
    )


def job_from_row(row: sqlite3.Row) -> Job:
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
        method=row["method"],
    )


def event_from_row(row: sqlite3.Row) -> JobEvent:
    return JobEvent(
        row["id"],
        row["created_at"],
        row["level"],
        row["message"],
        row["type"],
        json.loads(row["data"]),
    )
