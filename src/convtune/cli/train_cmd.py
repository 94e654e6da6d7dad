"""`convtune train` and `convtune follow`: create a fine-tuning job and watch it run."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..contract import JobRequest
from . import render
from .backend import Backend, again, backend_option, service_for
from .follow_view import follow_to_end
from .tables import when

DEFAULT_MODELS = {"local": "SmolLM2-135M-Instruct", "openai": "gpt-4.1-mini-2025-04-14"}
LOCAL_ONLY = ("lora_r", "lora_alpha", "full", "max_length", "max_steps", "nproc_per_node")


class Auto(click.ParamType):
    """'auto' or a number in range, checked while parsing: before any file is uploaded."""

    def __init__(self, kind: type, low: float, high: float) -> None:
        self.kind, self.low, self.high = kind, low, high
        noun = "an integer" if kind is int else "a number"
        self.name = f"auto|{'N' if kind is int else 'X'}"
        self.expected = f"'auto' or {noun} from {low:g} to {high:g}"

    def convert(self, value, param, ctx):
        if value == "auto" or (isinstance(value, self.kind) and not isinstance(value, bool)):
            return value
        try:
            number = self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not {self.expected}", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{value!r} is not {self.expected}", param, ctx)
        return number


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
@click.option(
    "--n-epochs",
    type=Auto(int, 1, 50),
    default="auto",
    show_default=True,
    help="Epochs, or auto (OpenAI's rule).",
)
@click.option(
    "--batch-size",
    type=Auto(int, 1, 256),
    default="auto",
    show_default=True,
    help="Examples per step, or auto.",
)
@click.option(
    "--learning-rate-multiplier",
    type=Auto(float, 1e-9, 100.0),
    default="auto",
    show_default=True,
    help="Times the base learning rate (2e-4 LoRA, 2e-5 full), or auto (1).",
)
@click.option(
    "--lora-r", type=click.IntRange(min=1), default=16, show_default=True, help="LoRA rank."
)
@click.option(
    "--lora-alpha", type=click.IntRange(min=1), default=32, show_default=True, help="LoRA alpha."
)
@click.option("--full", is_flag=True, help="Full fine-tune instead of LoRA.")
@click.option(
    "--max-length",
    type=click.IntRange(min=16),
    default=1024,
    show_default=True,
    help="Longest example in tokens; longer ones lose their oldest tokens.",
)
@click.option(
    "--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps."
)
@click.option("--seed", type=int, default=None, help="Seed of the run (default: random, recorded).")
@click.option(
    "--metadata",
    "metadata_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata to attach to the job (repeatable).",
)
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes to train with (torchrun, DDP): one per GPU.",
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
    n_epochs: str,
    batch_size: str,
    learning_rate_multiplier: str,
    lora_r: int,
    lora_alpha: int,
    full: bool,
    max_length: int,
    max_steps: int | None,
    seed: int | None,
    metadata_items: tuple[str, ...],
    nproc_per_node: int,
    detach: bool,
    no_reuse: bool,
    backend: Backend,
) -> None:
    """Fine-tune a model on a JSONL file and follow the job live."""
    metadata = _metadata(metadata_items)
    if backend.name != "local":
        given = [
            name
            for name in LOCAL_ONLY
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise click.UsageError(f"{options}: options of --backend local only")
    if no_reuse and backend.name == "local":  # locally, only the very same bytes are reused
        raise click.UsageError("--no-reuse is an option of --backend openai")
    service = service_for(backend)
    if getattr(service, "is_openai", False):
        from ..openai_backend import wind_down_warning

        render.err.print(f"[yellow]warning:[/] {wind_down_warning()}", highlight=False)
    reuse = not no_reuse
    train_file = _upload(service, training_file, "training file", reuse=reuse)
    valid_file = (
        _upload(service, validation_file, "validation file", reuse=reuse)
        if validation_file
        else None
    )
    local = backend.name == "local"
    request = JobRequest(
        model=model or DEFAULT_MODELS[backend.name],
        training_file=train_file.id,
        validation_file=valid_file.id if valid_file else None,
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=learning_rate_multiplier,
        suffix=suffix,
        seed=seed,
        metadata=metadata,
        options={
            "lora_r": lora_r,
            "lora_alpha": lora_alpha,
            "full": full,
            "max_length": max_length,
            "max_steps": max_steps,
            "nproc_per_node": nproc_per_node,
        }
        if local
        else {},
    )
    job = service.create_job(request)
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


def _upload(service, path: Path, what: str, *, reuse: bool = True):
    """Upload with a progress bar (large files, on a terminal); say which file id it became,
    and when an earlier upload was reused instead (a remote service matches it on name, size
    and purpose only, so the user must be able to see it and refuse it with --no-reuse)."""
    size = path.stat().st_size if path.is_file() else 0
    started = int(time.time())
    options = {} if reuse else {"reuse": False}
    with render.progress_bar(f"uploading {path.name}", size) as update:
        if update:
            options["progress"] = update
        uploaded = service.upload_file(path, **options)
    if getattr(service, "base_url", None):  # a remote file id is worth knowing
        line = f"{what.capitalize()} {path.name}: {uploaded.id}"
        if uploaded.created_at and uploaded.created_at < started - 1:
            line += f" (reused: uploaded {when(uploaded.created_at)}; --no-reuse sends it again)"
        render.out.print(line, highlight=False)
    return uploaded


@click.command(
    short_help="Follow a job live until it ends (Ctrl-C detaches).",
    epilog="\b\nExamples:\n  convtune follow ftjob-abc123\n  convtune follow ftjob-abc123 --backend openai"
)
@click.argument("job_id")
@backend_option
def follow(job_id: str, backend: Backend) -> None:
    """Follow a job's events and progress until it ends (Ctrl-C detaches, never cancels)."""
    service = service_for(backend)
    follow_to_end(service, job_id)
