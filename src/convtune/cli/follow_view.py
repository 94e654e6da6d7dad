"""Showing a job as it runs: messages as lines, metrics as one live progress bar.

Ctrl-C detaches (the job goes on in its own process, or on the service) and says how to follow it
again. Over a network, a dropped connection, 429 or 5xx is a yellow line and a retry, not the end.
"""

from __future__ import annotations

from datetime import datetime

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..service.contract import FineTuningService
from ..service.follow import JobProgress, follow
from ..service.objects import Job, JobEvent
from . import render
from .backend import again


def _stamp(event: JobEvent) -> str:
    return datetime.fromtimestamp(event.created_at).strftime("%H:%M:%S")


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def follow_job(service: FineTuningService, job_id: str, *, poll: float | None = None) -> Job | None:
    """Render the job's events until it ends; None if the user detached with Ctrl-C."""
    out = render.out
    if poll is None:
        poll = service.poll_interval
    state = JobProgress()
    bar = Progress(
        TextColumn("[bold]training[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
        TimeRemainingColumn(),
        console=out,
        transient=False,
        disable=not out.is_terminal,
    )
    task = None

    def retrying(error, delay: float) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        text = escape(f"{stamp}  {error}; trying again in {delay:.0f} s")
        out.print(f"[yellow]{text}[/]", highlight=False)

    try:
        with bar:
            for item in follow(service, job_id, poll=poll, on_retry=retrying):
                if isinstance(item, Job):
                    return item
                event = item
                if event.type == "metrics":
                    state.update(event)
                    if task is None:
                        task = bar.add_task(
                            "train", total=state.total_steps or None, loss="—", val="—"
                        )
                    bar.update(
                        task,
                        completed=state.step,
                        total=state.total_steps or None,
                        loss=_loss(state.train_loss),
                        val=_loss(state.valid_loss),
                    )
                    if not out.is_terminal:  # logs and pipes get one line per metrics event
                        out.print(escape(f"{_stamp(event)}  {event.message}"))
                    continue
                style = {"error": "red", "warn": "yellow"}.get(event.level, "")
                text = escape(f"{_stamp(event)}  {event.message}")
                out.print(f"[{style}]{text}[/]" if style else text, highlight=False)
    except KeyboardInterrupt:
        out.print(
            f"\nDetached from {job_id}; it goes on in the background."
            f"\nFollow it again with: convtune follow {job_id}{again(service)}"
        )
        return None
    return None


def summary(job: Job, service: FineTuningService | None = None) -> None:
    out = render.out
    args = again(service) if service is not None else ""
    if job.status == "succeeded":
        verdict = learning_verdict(service, job.id) if service is not None else None
        if verdict is not None:
            out.print(f"\n{verdict_line(verdict)}", highlight=False)
        out.print(f"\n[green]Fine-tuned model:[/] [bold]{job.fine_tuned_model}[/]")
        out.print(f"Chat with it:     convtune chat {job.fine_tuned_model}{args}")
        if job.result_files:
            out.print(f"Plot the loss:    convtune plot {job.id}{args}")
            out.print(f"Results (CSV):    convtune jobs results {job.id}{args} -o {job.id}.csv")
    elif job.status == "failed":
        message = job.error.message if job.error else "unknown error"
        out.print(f"\n[red]Job {job.id} failed:[/] {escape(message)}")
        if job.error and job.error.code.startswith("invalid_"):  # a resume reads the same file
            out.print("Fix the file (convtune check FILE says what is wrong) and train again.")
        elif service is None or service.capabilities.resume_ended:
            out.print(f"Resume it from its last checkpoint: convtune jobs resume {job.id}")
    elif job.status == "paused":
        out.print(f"\nJob {job.id} is paused.")
        out.print(f"Resume it where it stopped: convtune jobs resume {job.id}{args}")
    else:
        out.print(f"\nJob {job.id} is {job.status}.")


def follow_to_end(service: FineTuningService, job_id: str) -> None:
    """Follow, print the outcome, and exit 1 unless the job succeeded or paused (Ctrl-C: 0)."""
    import click

    finished = follow_job(service, job_id)
    if finished is not None:
        summary(finished, service)
        if finished.status not in ("succeeded", "paused"):
            raise click.exceptions.Exit(1)


def learning_verdict(service: FineTuningService, job_id: str) -> dict | None:
    """The job's "Did it learn?" verdict (an event's `data`), if it has one: a local job with a
    validation file ends with it; other services' jobs have none."""
    for event in service.jobs.list_events(job_id, limit=20):
        found = event.data.get("verdict") if isinstance(event.data, dict) else None
        if isinstance(found, dict) and found.get("graders"):
            return found
    return None


def verdict_line(verdict: dict) -> str:
    """'Did it learn? better: fuzzy_match +0.21 [+0.15, +0.27], rouge_l ... (17 prompts)',
    coloured by the first grader's word."""
    parts = []
    for g in verdict["graders"]:
        d = g["difference"]
        parts.append(f"{g['grader']} {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]")
    word = verdict["graders"][0]["verdict"]
    colour = {"better": "green", "worse": "red"}.get(word, "yellow")
    said = {"better": "better than", "worse": "worse than"}.get(word, "no clear difference from")
    prompts = verdict["prompts"]
    return (
        f"[bold]Did it learn?[/] [{colour}]{said}[/] {escape(verdict['base_model'])}:"
        f" {', '.join(parts)} (95% intervals, {prompts} validation"
        f" prompt{'s' if prompts != 1 else ''})"
    )
