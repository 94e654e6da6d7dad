"""`convtune train` and `convtune follow`: create a fine-tuning job and watch it run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from ..dataset.check import file_format
from ..errors import InputError, OptionError
from ..service.contract import FineTuningService, JobRequest
from ..service.training_options import method_data_problem, refuse_trainer_options
from . import render
from .backend import Backend, again, backend_option, service_class, service_for
from .follow_view import follow_to_end
from .tables import when
from .train_options import given_trainer_options, pop_train_options, train_options

DEFAULT_MODELS = {"local": "SmolLM2-135M-Instruct", "openai": "gpt-4.1-mini-2025-04-14"}


@click.command(
    epilog="""
\b
Examples:
  convtune train out/conversations.train.jsonl --validation-file out/conversations.valid.jsonl
  convtune train out/x.train.jsonl --model ./my-hf-model --n-epochs 3 --suffix support --detach
  convtune train out/x.train.jsonl --max-steps 20 --lora-r 8
  convtune train out/x.train.jsonl --backend openai --model gpt-4.1-mini-2025-04-14 --suffix support
  convtune train out/x.train.jsonl --base-url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Instruct
"""
)
@click.argument("training_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--validation-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Validation JSONL: its loss is reported as training goes.",
)
@click.option(
    "--model",
    default=None,
    help="Base model. local: SmolLM2-135M-Instruct (default), a Hugging Face model folder, a .gguf"
    " file or a hub id; openai: a model the service fine-tunes (default gpt-4.1-mini-2025-04-14).",
)
@click.option(
    "--suffix", default=None, help="Part of the fine-tuned model's name: ft:<base>:<suffix>:<job>."
)
@train_options
@click.option("--seed", type=int, default=None, help="Seed of the run (default: random, recorded).")
@click.option(
    "--metadata",
    "metadata_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata to attach to the job (repeatable).",
)
@click.option("--detach", is_flag=True, help="Start the job and return at once.")
@click.option(
    "--no-reuse",
    is_flag=True,
    help="Upload the files again even if the service has files of the same name and size.",
)
@backend_option
@click.pass_context
def train(
    ctx: click.Context,
    training_file: Path,
    validation_file: Path | None,
    model: str,
    suffix: str | None,
    seed: int | None,
    metadata_items: tuple[str, ...],
    detach: bool,
    no_reuse: bool,
    backend: Backend,
    **training: Any,
) -> None:
    """Fine-tune a model on a JSONL file and follow the job live."""
    metadata = _metadata(metadata_items)
    options = pop_train_options(training)
    if not service_class(backend).capabilities.trainer_options:
        try:
            refuse_trainer_options(given_trainer_options(ctx), backend.name, flags=True)
        except OptionError as exc:
            raise click.UsageError(exc.message) from None
    for path in filter(None, (training_file, validation_file)):  # before anything is uploaded
        problem = method_data_problem(options.method, file_format(path))
        if problem is not None:
            raise InputError(problem, path=path)
    service = service_for(backend)
    for notice in service.notices():
        render.err.print(f"[yellow]warning:[/] {escape(notice)}", highlight=False)
    reuse = not no_reuse
    train_file = _upload(service, training_file, "training file", reuse=reuse)
    valid_file = (
        _upload(service, validation_file, "validation file", reuse=reuse)
        if validation_file
        else None
    )
    request = JobRequest(
        model=model or DEFAULT_MODELS[backend.name],
        training_file=train_file.id,
        validation_file=valid_file.id if valid_file else None,
        suffix=suffix,
        seed=seed,
        metadata=metadata,
        options=options,
    )
    job = service.jobs.create(request)
    render.out.print(f"Created fine-tuning job [bold]{job.id}[/] ({job.model}, {job.status})")
    if detach:
        render.out.print(f"Follow it with: convtune follow {job.id}{again(service)}")
        return
    follow_to_end(service, job.id)


def _metadata(items: tuple[str, ...]) -> dict[str, str] | None:
    metadata = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        metadata[key.strip()] = value
    return metadata or None


def _upload(service: FineTuningService, path: Path, what: str, *, reuse: bool = True):
    """Upload with a progress bar (large files, on a terminal); say which file id it became,
    and when an earlier upload was reused instead (a remote service matches it on name, size
    and purpose only, so the user must be able to see it and refuse it with --no-reuse)."""
    size = path.stat().st_size if path.is_file() else 0
    started = int(time.time())
    with render.progress_bar(f"uploading {path.name}", size) as update:
        uploaded = service.files.upload(path, reuse=reuse, progress=update)
    if service.capabilities.remote:  # a remote file id is worth knowing
        line = f"{what.capitalize()} {path.name}: {uploaded.id}"
        if uploaded.created_at and uploaded.created_at < started - 1:
            line += f" (reused: uploaded {when(uploaded.created_at)}; --no-reuse sends it again)"
        render.out.print(line, highlight=False)
    return uploaded


@click.command(
    short_help="Follow a job live until it ends (Ctrl-C detaches).",
    epilog="\b\nExamples:\n  convtune follow ftjob-abc123\n  convtune follow ftjob-abc123 --backend openai",
)
@click.argument("job_id")
@backend_option
def follow(job_id: str, backend: Backend) -> None:
    """Follow a job's events and progress until it ends (Ctrl-C detaches, never cancels)."""
    service = service_for(backend)
    follow_to_end(service, job_id)
