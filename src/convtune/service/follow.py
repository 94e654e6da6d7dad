"""Following a job: its events, oldest first, until it ends; the same for every backend.

The local store hands out events with a sequence number; OpenAI lists them newest first, so the
generic path pages through `list_events` and de-duplicates by id. Either way a follower sees each
event once, in order, and stops when the job is over. The generic path talks to a service over a
network: a `TransientError` (a dropped connection, 429, 5xx) is retried with capped exponential
backoff instead of ending the follow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import TransientError
from .backoff import PATIENCE, Backoff
from .contract import FineTuningService
from .objects import Job, JobEvent


@dataclass
class JobProgress:
    """What a progress display needs, updated from metrics events."""

    step: int = 0
    total_steps: int = 0
    train_loss: float | None = None
    valid_loss: float | None = None
    accuracy: float | None = None

    def update(self, event: JobEvent) -> None:
        if event.type != "metrics":
            return
        data = event.data
        self.step = int(data.get("step", self.step))
        self.total_steps = int(data.get("total_steps", self.total_steps) or self.total_steps)
        self.train_loss = data.get("train_loss", self.train_loss)
        if data.get("valid_loss") is not None:
            self.valid_loss = data["valid_loss"]
        self.accuracy = data.get("train_mean_token_accuracy", self.accuracy)


def follow(
    service: FineTuningService,
    job_id: str,
    *,
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[TransientError, float], None] | None = None,
    patience: float = PATIENCE,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[JobEvent | Job]:
    """Yield each new event, oldest first, then the finished (or paused) job as the last item.

    A paused job ends the follow too: nothing happens until someone resumes it. Over a network
    it must be seen paused on two polls in a row, so that a follow started just after a resume
    does not stop on a status the service has not updated yet.

    Over a network (not the local store), a `TransientError` waits `poll` seconds (one at least), then
    twice as long each time up to `MAX_BACKOFF`, calling `on_retry(error, delay)` first; after `patience`
    seconds without a successful poll the error is raised.
    """
    if service.capabilities.numbered_events:
        last = 0
        while True:
            job = service.jobs.get(job_id)  # read first: events written before it ends are seen
            for number, event in service.jobs.events_since(job_id, last):
                last = number
                yield event
            if job.done or job.status == "paused":
                yield job
                return
            sleep(poll)
    seen: set[str] = set()
    paused_polls = 0
    backoff = Backoff(poll, patience, sleep, clock, on_retry)
    while True:
        try:
            job = service.jobs.get(job_id)
            fresh = _new_events(service, job_id, seen)
        except TransientError as error:
            backoff.wait(error)
            continue
        backoff.reset()
        for event in fresh:
            seen.add(event.id)
            yield event
        paused_polls = paused_polls + 1 if job.status == "paused" else 0
        if job.done or paused_polls >= 2:
            yield job
            return
        sleep(poll)


def _new_events(service: FineTuningService, job_id: str, seen: set[str]) -> list[JobEvent]:
    """The events not seen yet, oldest first: page back (newest first) to a seen one."""
    fresh: dict[str, JobEvent] = {}
    after = None
    while True:
        page = service.jobs.list_events(job_id, after=after, limit=100)
        new = [e for e in page if e.id not in seen]
        fresh.update((e.id, e) for e in new if e.id not in fresh)
        if len(new) < len(page) or len(page) < 100:
            break
        after = page[-1].id
    return list(reversed(fresh.values()))
