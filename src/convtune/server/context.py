"""What every route needs: the service behind its gate, and the server's few settings."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ..service.contract import FineTuningService
from .stored_completions import StoredCompletions
from .threaded_calls import ThreadedCalls


@dataclass
class Context:
    service: FineTuningService  # the local backend's, as `convtune serve` connects it
    gate: ThreadedCalls
    max_upload_bytes: int
    uploads: Path  # temporary folders of uploads in progress
    completions: StoredCompletions
    chat_slots: int = 4  # chat requests generating at once; the others wait without a thread
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)
    _chat_threads: anyio.CapacityLimiter | None = field(default=None, repr=False)

    @property
    def slots(self) -> asyncio.Semaphore:
        """Created on first use, inside the server's event loop."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.chat_slots)
        return self._slots

    @property
    def chat_threads(self) -> anyio.CapacityLimiter:
        """The threads that wait for replies' pieces: a pool of their own (one per slot), so that
        replies generating together never hold the threads the other routes run in."""
        if self._chat_threads is None:
            self._chat_threads = anyio.CapacityLimiter(self.chat_slots)
        return self._chat_threads

    @contextlib.asynccontextmanager
    async def upload_folder(self) -> AsyncIterator[Path]:
        """A fresh folder under `uploads` for one request's upload (`sweep_uploads` finds what a
        killed server left there), removed afterwards in a thread: it may hold a large file."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=self.uploads))
        try:
            yield folder
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, folder, True)
