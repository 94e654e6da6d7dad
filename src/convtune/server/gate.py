"""Calls into `LocalService` from async routes: in a worker thread, one at a time.

`LocalService` holds one SQLite connection and some plain dicts (worker processes, loaded chat
models); it was written for one caller. The server has many at once, so every call goes through
this gate: run in a thread (the event loop never blocks on SQLite or a copy) under one lock
(two requests never interleave a store transaction). Calls are short, except that cancel and
pause wait for the worker to stop and the first chat with a model loads it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

T = TypeVar("T")


class Gate:
    def __init__(self, service: Any) -> None:
        self.service = service
        self._lock = threading.Lock()

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def locked() -> T:
            with self._lock:
                return fn(*args, **kwargs)

        return await anyio.to_thread.run_sync(locked)
