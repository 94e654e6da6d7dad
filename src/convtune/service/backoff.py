"""Waiting out a service that is briefly unavailable: capped exponential backoff, bounded patience.

`follow` and `eval` talk to services over a network, where a dropped connection, a 429 or a 5xx
(`TransientError`) says "try again later"; each caller keeps one `Backoff` per thing it retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import TransientError

MAX_BACKOFF = 60.0  # seconds between two tries, at most
PATIENCE = 1800.0  # give up after this long without one success


@dataclass
class Backoff:
    """`wait(error)` after a failure sleeps `base`, then twice as long each time up to
    `MAX_BACKOFF`, and raises the error once `patience` seconds passed without a success;
    `reset()` after a success."""

    base: float = 1.0
    patience: float = PATIENCE
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    on_retry: Callable[[TransientError, float], None] | None = None
    _since: float | None = field(default=None, repr=False)
    _failures: int = field(default=0, repr=False)

    def wait(self, error: TransientError) -> None:
        now = self.clock()
        if self._since is None:
            self._since = now
        elif now - self._since >= self.patience:
            raise error
        delay = min(MAX_BACKOFF, max(self.base, 1.0) * 2**self._failures)
        self._failures += 1
        if self.on_retry is not None:
            self.on_retry(error, delay)
        self.sleep(delay)

    def reset(self) -> None:
        self._since, self._failures = None, 0
