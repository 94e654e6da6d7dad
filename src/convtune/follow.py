"""Following a job: its events, oldest first, until it ends; the same for every backend.

The local store hands out events with a sequence number; OpenAI lists them newest first, so the
generic path pages through `list_events` and de-duplicates by id. Either way a follower sees each
event once, in order, and stops when the job is over.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .objects import Job, JobEvent


@dataclass
class Progress:
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
    service,
    job_id: str,
    *,
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[JobEvent | Job]:
    """Yield each new event, oldest first, then the finished job as the last item."""
    if hasattr(service, "events_since"):
        last = 0
        while True:
            job = service.get_job(job_id)  # read first: events written before it ends are seen
            for number, event in service.events_since(job_id, last):
                last = number
                yield event
            if job.done:
                yield job
                return
            sleep(poll)
    seen: set[str] = set()
    while True:
        job = service.get_job(job_id)
        fresh: list[JobEvent] = []
        after = None
        while True:  # newest first: page back until an event we have seen
            page = service.list_events(job_id, after=after, limit=100)
            new = [e for e in page if e.id not in seen]
            fresh.extend(new)
            if len(new) < len(page) or len(page) < 100:
                break
            after = page[-1].id
        for event in reversed(fresh):
            seen.add(event.id)
            yield event
        if job.done:
            yield job
            return
        sleep(poll)
