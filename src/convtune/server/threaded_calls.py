"""Calls into `LocalService` from async routes: in a worker thread, never on the event loop.

The service's calls block (SQLite, copying an upload, waiting for a worker to stop on cancel or
pause, loading a chat model the first time), so each runs in a thread of anyio's pool and the
event loop stays free for other requests. No lock is needed: the store gives every thread its
own SQLite connection, and the service loads each chat model once however many threads ask.
A slow call (a pause waiting for its checkpoint) therefore holds up only its own request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

T = TypeVar("T")


class ThreadedCalls:
    """`await ctx.gate(service.jobs.get, job_id)`: the call, in a thread of anyio's pool."""

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
