"""Chat completions created with `store: true`, for `GET /v1/chat/completions`.

OpenAI keeps such completions for its distillation and evals products and lists them back; the
local equivalent is a small SQLite database beside the job store (`stored-completions.db` in the
data folder), so that the list survives a restart. Only `store: true` requests are kept, as on
OpenAI; nothing else a chat says is written anywhere.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from .errors import APIError

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created INTEGER NOT NULL,
    model TEXT NOT NULL, metadata TEXT NOT NULL, body TEXT NOT NULL
)
"""


class StoredCompletions:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def add(self, completion: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO completions (id, created, model, metadata, body) VALUES (?,?,?,?,?)",
                (
                    completion["id"],
                    completion["created"],
                    completion["model"],
                    json.dumps(completion.get("metadata") or {}),
                    json.dumps(completion),
                ),
            )

    def list(
        self,
        *,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
        after: str | None = None,
        limit: int = 20,
        order: str = "asc",
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page in creation order (`asc`, OpenAI's default, or `desc`), and whether more follow."""
        sql, args = "SELECT body, metadata FROM completions WHERE 1", []
        with self._lock:
            if after is not None:
                pivot = self._db.execute(
                    "SELECT seq FROM completions WHERE id = ?", (after,)
                ).fetchone()
                if pivot is None:
                    raise APIError(
                        400, f"Invalid 'after': no stored completion {after!r}.", param="after"
                    )
                sql += " AND seq > ?" if order == "asc" else " AND seq < ?"
                args.append(pivot[0])
            if model is not None:
                sql += " AND model = ?"
                args.append(model)
            sql += " ORDER BY seq " + ("ASC" if order == "asc" else "DESC")
            rows = self._db.execute(sql, args).fetchall()
        found: list[dict[str, Any]] = []
        for body, stored_metadata in rows:
            if metadata:
                have = json.loads(stored_metadata)
                if any(have.get(k) != v for k, v in metadata.items()):
                    continue
            found.append(json.loads(body))
            if len(found) > limit:
                break
        return found[:limit], len(found) > limit
