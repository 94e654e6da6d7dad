"""A fine-tuning job's metrics, gathered from whatever `FineTuningService` runs it.

`job_metrics` reads the job's results file (OpenAI's CSV, `results_csv`) or else its `metrics`
events, and knows where its epochs ended; `charts.loss_figure` draws what it returns.

    metrics = convtune.job_metrics(service, "ftjob-abc123")
    convtune.save_png(convtune.loss_figure(metrics), "loss.png")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConvtuneError
from ..service.contract import FineTuningService
from .results_csv import in_step_order, metrics_row, read_results


class NoMetrics(ConvtuneError):
    """A job with no training metrics (yet): nothing to plot."""


@dataclass
class JobMetrics:
    """A job's metrics, one row per step in step order, and where they came from.

    `epoch_ends` are the steps after which an epoch ended (the last step excluded), when known.
    """

    rows: list[dict[str, Any]]
    epoch_ends: list[int] = field(default_factory=list)
    job_id: str | None = None
    model: str | None = None
    source: str = ""

    @property
    def steps(self) -> int:
        return self.rows[-1]["step"] if self.rows else 0


def job_metrics(service: FineTuningService, job_id: str) -> JobMetrics:
    """A job's metrics, from whatever `FineTuningService` runs it.

    The results file when the job has one (a finished job), completed from the `metrics` events
    when it does not start at the first step (a resumed job); the events alone while it runs.
    A local service's events are always read too: a database query away, they know the epochs.
    Raises `NotFound` (from the service) for an unknown job, `NoMetrics` for a job without any.
    """
    job = service.jobs.get(job_id)
    rows: list[dict[str, Any]] = []
    sources = []
    for file_id in job.result_files or []:
        try:
            rows = read_results(service.files.content(file_id))
        except ConvtuneError:
            continue
        if rows:
            sources.append(f"results file {file_id}")
            break
    # numbered events are a database query away: read them for the epochs too
    local = service.capabilities.numbered_events
    if not rows or rows[0]["step"] > 1 or local:
        events = _event_rows(service, job_id)
        if events:
            sources.append("metrics events")
            rows = in_step_order([*events, *rows])  # the results file wins for a step in both
    if not rows:
        raise NoMetrics(
            f"job {job_id} has no training metrics yet (it is {job.status})",
            hint=f"metrics come with its first steps: convtune follow {job_id}"
            if not job.done
            else "it ended before its first training step",
        )
    return JobMetrics(
        rows,
        _epoch_ends(rows, job),
        job_id=job.id,
        model=job.fine_tuned_model or job.model,
        source=" + ".join(sources),
    )


def _event_rows(
    service: FineTuningService, job_id: str, *, page: int = 100, most: int = 200_000
) -> list[dict]:
    """Metrics rows from the job's events (newest first, paged with `after`)."""
    rows: list[dict[str, Any]] = []
    after = None
    seen = 0
    while seen < most:
        events = service.jobs.list_events(job_id, after=after, limit=page)
        for event in events:
            if event.type == "metrics" and isinstance(event.data, Mapping):
                row = metrics_row(event.data)
                if row is not None:
                    rows.append(row)
        seen += len(events)
        if len(events) < page:
            break
        after = events[-1].id
    rows.reverse()  # oldest first, so that a resumed run's rows win
    return rows


def _epoch_ends(rows: list[dict[str, Any]], job) -> list[int]:
    """Steps after which an epoch ended: from the rows' `epoch` (local events), else from the
    job's `n_epochs` when its steps divide evenly (OpenAI: n_epochs x steps per epoch)."""
    if not rows:
        return []
    last = rows[-1]["step"]
    per_epoch = None
    ratios = sorted(r["step"] / r["epoch"] for r in rows if r.get("epoch") and r["step"] > 0)
    if ratios:
        per_epoch = round(ratios[len(ratios) // 2])
    else:
        n_epochs = (job.hyperparameters or {}).get("n_epochs") if job is not None else None
        if (
            isinstance(n_epochs, int)
            and n_epochs > 1
            and job.status == "succeeded"
            and last % n_epochs == 0
        ):
            per_epoch = last // n_epochs
    if not per_epoch or per_epoch < 1:
        return []
    return list(range(per_epoch, last, per_epoch))
