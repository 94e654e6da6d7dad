"""What convtune did on each OpenAI-compatible service, remembered in the data directory.

OpenAI tags nothing with its uploader, so convtune writes down, per base URL, the files it
uploaded (with their digest, to reuse an identical upload and to check a file before a job uses
it) and the jobs it created. "Created by convtune" is then known for files, for jobs (also tagged
on the service with `metadata.created_by`) and for models (a model is convtune's if its job is).
One small SQLite file, opened per operation: several convtune processes may use it at once.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    base_url TEXT NOT NULL, id TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT, mtime_ns INTEGER,
    ours INTEGER NOT NULL, recorded_at INTEGER NOT NULL,
    PRIMARY KEY (base_url, id)
);
CREATE TABLE IF NOT EXISTS jobs (
    base_url TEXT NOT NULL, id TEXT NOT NULL, recorded_at INTEGER NOT NULL,
    PRIMARY KEY (base_url, id)
);
"""
VERSION = 1


class Record:
    """The files and jobs convtune knows about on one service (one base URL)."""

    def __init__(self, path: Path, base_url: str) -> None:
        self.path = Path(path)
        self.base_url = base_url
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        if not self._ready:
            with db:
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version = {VERSION}")
            self._ready = True
        return db

    def add_file(
        self,
        file_id: str,
        *,
        filename: str,
        size: int,
        purpose: str,
        sha256: str,
        path: Path | None,
        mtime_ns: int | None,
        ours: bool,
    ) -> None:
        """Remember a file; `ours` is True only for an upload convtune made (never un-set)."""
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (base_url, id) DO UPDATE SET sha256 = excluded.sha256,"
                " path = excluded.path, mtime_ns = excluded.mtime_ns,"
                " ours = max(files.ours, excluded.ours)",
                (
                    self.base_url,
                    file_id,
                    filename,
                    size,
                    purpose,
                    sha256,
                    str(path) if path is not None else None,
                    mtime_ns,
                    int(ours),
                    int(time.time()),
                ),
            )

    def file(self, file_id: str) -> dict | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT * FROM files WHERE base_url = ? AND id = ?", (self.base_url, file_id)
            ).fetchone()
        return dict(row) if row is not None else None

    def files(self) -> dict[str, dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM files WHERE base_url = ?", (self.base_url,))
            return {row["id"]: dict(row) for row in rows}

    def forget_file(self, file_id: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM files WHERE base_url = ? AND id = ?", (self.base_url, file_id))

    def add_job(self, job_id: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR IGNORE INTO jobs VALUES (?, ?, ?)",
                (self.base_url, job_id, int(time.time())),
            )

    def jobs(self) -> set[str]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT id FROM jobs WHERE base_url = ?", (self.base_url,))
            return {row["id"] for row in rows}
