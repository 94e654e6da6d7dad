"""`convtune jobs ...` and `convtune models ...`: list, show, cancel, resume, delete."""

from __future__ import annotations

from datetime import datetime

import click
from rich.table import Table

from . import render
from .backend import backend_option, service_for


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "—"


@click.group(
    epilog="\b\nExamples:\n  convtune jobs list\n  convtune jobs show ftjob-abc123\n  convtune jobs cancel ftjob-abc123"
)
def jobs() -> None:
    """List, inspect, cancel and resume fine-tuning jobs."""


@jobs.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print OpenAI-shaped JSON.")
@backend_option
def list_jobs(limit: int, as_json: bool, backend: str) -> None:
    """The newest jobs first."""
    found = service_for(backend).list_jobs(limit=limit)
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
        table.add_row(j.id, j.status, _when(j.created_at), j.model, j.fine_tuned_model or "")
    render.out.print(table)


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@backend_option
def show(job_id: str, as_json: bool, backend: str) -> None:
    """One job: status, hyperparameters, error, model, checkpoints."""
    service = service_for(backend)
    job = service.get_job(job_id)
    if as_json:
        render.print_json(job.to_dict())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("job", job.id)
    table.add_row("status", job.status)
    table.add_row("model", job.model)
    table.add_row("created", _when(job.created_at))
    table.add_row("finished", _when(job.finished_at))
    table.add_row("training file", job.training_file)
    table.add_row("validation file", job.validation_file or "—")
    table.add_row("hyperparameters", ", ".join(f"{k}={v}" for k, v in job.hyperparameters.items()))
    table.add_row("seed", str(job.seed))
    if job.trained_tokens:
        table.add_row("trained tokens", f"{job.trained_tokens:,}")
    if job.error:
        table.add_row("error", f"[red]{job.error.message}[/]")
    if job.fine_tuned_model:
        table.add_row("fine-tuned model", job.fine_tuned_model)
    render.out.print(table)
    checkpoints = service.list_checkpoints(job_id)
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
    render.out.print(table)


@jobs.command("checkpoints")
@click.argument("job_id")
@backend_option
def checkpoints(job_id: str, backend: str) -> None:
    """The job's checkpoints (one per epoch), newest first."""
    found = service_for(backend).list_checkpoints(job_id)
    if not found:
        render.out.print(f"{job_id} has no checkpoint yet.")
        return
    _checkpoint_table(found)


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@backend_option
def cancel(job_id: str, yes: bool, backend: str) -> None:
    """Stop a running job cleanly (after its current step)."""
    if not yes:
        click.confirm(f"Cancel {job_id}?", abort=True, err=True)
    job = service_for(backend).cancel_job(job_id)
    render.out.print(f"{job.id} is {job.status}.")


@jobs.command("resume")
@click.argument("job_id")
@click.option("--detach", is_flag=True, help="Return at once instead of following.")
@backend_option
def resume(job_id: str, detach: bool, backend: str) -> None:
    """Continue a failed or cancelled job from its last checkpoint."""
    from .follow_view import follow_to_end

    service = service_for(backend)
    job = service.resume_job(job_id)
    render.out.print(f"Resumed {job.id} ({job.status})")
    if detach:
        render.out.print(f"Follow it with: convtune follow {job.id}")
        return
    follow_to_end(service, job.id)


@click.group(
    epilog="\b\nExamples:\n  convtune models list\n  convtune models delete ft:SmolLM2-135M-Instruct:support:ftjob-abc123"
)
def models() -> None:
    """List and delete fine-tuned models."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@backend_option
def list_models(as_json: bool, backend: str) -> None:
    """Fine-tuned models, newest first."""
    found = service_for(backend).list_models()
    if as_json:
        render.print_json({"object": "list", "data": [m.to_dict() for m in found]})
        return
    if not found:
        render.out.print("No fine-tuned models yet.")
        return
    table = Table(box=None, padding=(0, 2))
    table.add_column("model")
    table.add_column("created")
    for m in found:
        table.add_row(m.id, _when(m.created))
    render.out.print(table)


@models.command("delete")
@click.argument("model_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@backend_option
def delete_model(model_id: str, yes: bool, backend: str) -> None:
    """Delete a fine-tuned model from disk and database."""
    service = service_for(backend)
    service.get_model(model_id)  # a missing id fails before the question
    if not yes:
        click.confirm(f"Delete {model_id} and its files?", abort=True, err=True)
    service.delete_model(model_id)
    render.out.print(f"Deleted {model_id}.")
