"""`convtune jobs ...`: list, show, cancel, pause, resume, checkpoints, results."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..errors import ConvtuneError
from . import render
from .backend import Backend, again, backend_option, service_for
from .tables import print_table, when


@click.group(
    epilog="""
\b
Examples:
  convtune jobs list
  convtune jobs show ftjob-abc123
  convtune jobs cancel ftjob-abc123
  convtune jobs pause ftjob-abc123 --backend openai
  convtune jobs results ftjob-abc123 --backend openai -o results.csv
"""
)
def jobs() -> None:
    """List, inspect, cancel, pause and resume fine-tuning jobs."""


@jobs.command(
    "list",
    epilog="\b\nExamples:\n  convtune jobs list\n  convtune jobs list --backend openai --json",
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print OpenAI-shaped JSON.")
@backend_option
def list_jobs(limit: int, as_json: bool, backend: Backend) -> None:
    """The newest jobs first."""
    found = service_for(backend).jobs.list(limit=limit)
    if as_json:
        render.print_json({"object": "list", "data": [j.to_dict() for j in found]})
        return
    if not found:
        render.out.print("No fine-tuning jobs yet. Start one with: convtune train FILE.jsonl")
        return
    table = Table(box=None, padding=(0, 2))
    for column in ("job", "status", "created", "model", "fine-tuned model"):
        table.add_column(column, no_wrap=column != "fine-tuned model")
    for j in found:
        table.add_row(j.id, j.status, when(j.created_at), j.model, j.fine_tuned_model or "")
    print_table(table)


@jobs.command("show", epilog="\b\nExample:\n  convtune jobs show ftjob-abc123")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@backend_option
def show(job_id: str, as_json: bool, backend: Backend) -> None:
    """One job: status, hyperparameters, error, model, checkpoints."""
    service = service_for(backend)
    job = service.jobs.get(job_id)
    if as_json:
        render.print_json(job.to_dict())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("job", job.id)
    table.add_row("status", job.status)
    table.add_row("model", job.model)
    table.add_row("created", when(job.created_at))
    table.add_row("finished", when(job.finished_at))
    table.add_row("training file", job.training_file)
    table.add_row("validation file", job.validation_file or "—")
    table.add_row("hyperparameters", ", ".join(f"{k}={v}" for k, v in job.hyperparameters.items()))
    table.add_row("seed", str(job.seed))
    if job.suffix:
        table.add_row("suffix", escape(job.suffix))
    if job.metadata:
        table.add_row("metadata", escape(", ".join(f"{k}={v}" for k, v in job.metadata.items())))
    if job.trained_tokens:
        table.add_row("trained tokens", f"{job.trained_tokens:,}")
    if job.error:
        table.add_row("error", f"[red]{escape(job.error.message)}[/]")
    if job.fine_tuned_model:
        table.add_row("fine-tuned model", job.fine_tuned_model)
    print_table(table)
    checkpoints = service.jobs.list_checkpoints(job_id)
    if checkpoints:
        render.out.print()
        _checkpoint_table(checkpoints)


def _checkpoint_table(checkpoints) -> None:
    table = Table(box=None, padding=(0, 2))
    for column in ("checkpoint", "step", "train loss", "valid loss"):
        table.add_column(column)
    for c in checkpoints:
        m = c.metrics
        table.add_row(
            c.fine_tuned_model_checkpoint,
            str(c.step_number),
            f"{m['train_loss']:.4f}" if "train_loss" in m else "—",
            f"{m['valid_loss']:.4f}" if "valid_loss" in m else "—",
        )
    print_table(table)


@jobs.command("checkpoints", epilog="\b\nExample:\n  convtune jobs checkpoints ftjob-abc123")
@click.argument("job_id")
@backend_option
def checkpoints(job_id: str, backend: Backend) -> None:
    """The job's checkpoints (one per epoch), newest first."""
    found = service_for(backend).jobs.list_checkpoints(job_id)
    if not found:
        render.out.print(f"{job_id} has no checkpoint yet.")
        return
    _checkpoint_table(found)


@jobs.command(
    "cancel",
    epilog="\b\nExamples:\n  convtune jobs cancel ftjob-abc123\n  convtune jobs cancel ftjob-abc123 --yes --backend openai",
)
@click.argument("job_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@backend_option
def cancel(job_id: str, yes: bool, backend: Backend) -> None:
    """Stop a running job cleanly (after its current step)."""
    service = service_for(backend)
    service.jobs.get(job_id)  # a missing id fails before the question
    if not yes:
        click.confirm(f"Cancel {job_id}?", abort=True, err=True)
    job = service.jobs.cancel(job_id)
    render.out.print(f"{job.id} is {job.status}.")


@jobs.command("pause", epilog="\b\nExample:\n  convtune jobs pause ftjob-abc123")
@click.argument("job_id")
@backend_option
def pause(job_id: str, backend: Backend) -> None:
    """Pause a running job after a checkpoint; `jobs resume` continues it."""
    service = service_for(backend)
    if not service.capabilities.pause:
        raise ConvtuneError(f"the {backend} backend cannot pause jobs")
    job = service.jobs.pause(job_id)
    render.out.print(
        f"{job.id} is {job.status}. Resume it with: convtune jobs resume {job.id}{again(service)}"
    )


@jobs.command("results", epilog="\b\nExample:\n  convtune jobs results ftjob-abc123 -o results.csv")
@click.argument("job_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the CSV here (default: standard output).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@backend_option
def results(job_id: str, output: Path | None, force: bool, backend: Backend) -> None:
    """Download a job's results file: step, train loss and accuracy, valid loss (CSV)."""
    from .files_cmd import write

    service = service_for(backend)
    job = service.jobs.get(job_id)
    if not job.result_files:
        raise ConvtuneError(f"{job_id} has no results file yet (it is {job.status})")
    write(service.files.content(job.result_files[0]), output, force)


@jobs.command(
    "resume",
    epilog="\b\nExamples:\n  convtune jobs resume ftjob-abc123\n  convtune jobs resume ftjob-abc123 --detach",
)
@click.argument("job_id")
@click.option("--detach", is_flag=True, help="Return at once instead of following.")
@backend_option
def resume(job_id: str, detach: bool, backend: Backend) -> None:
    """Continue a paused (or failed, cancelled local) job from its checkpoint."""
    from .follow_view import follow_to_end

    service = service_for(backend)
    job = service.jobs.resume(job_id)
    render.out.print(f"Resumed {job.id} ({job.status})")
    if detach:
        render.out.print(f"Follow it with: convtune follow {job.id}{again(service)}")
        return
    follow_to_end(service, job.id)
