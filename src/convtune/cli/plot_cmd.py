"""`convtune plot JOB`: a PNG of a job's training and validation loss against steps."""

from __future__ import annotations

from pathlib import Path

import click

from ..metrics.charts import loss_figure, png_target, save_png
from ..metrics.job_metrics import job_metrics
from . import render
from .backend import backend_option, service_for


@click.command(
    short_help="Draw a job's training and validation loss as a PNG.",
    epilog="""
\b
Examples:
  convtune plot ftjob-abc123                  # writes ftjob-abc123-loss.png here
  convtune plot ftjob-abc123 -o loss.png --force
  convtune plot ftjob-abc123 --backend openai   # a job on OpenAI (OPENAI_API_KEY)
""",
)
@click.argument("job_id", metavar="JOB")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The PNG to write (default: JOB-loss.png in this folder).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing PNG.")
@backend_option
def plot(job_id: str, output: Path | None, force: bool, backend) -> None:
    """Draw a job's training and validation loss against steps, as a PNG.

    Works on running and finished jobs, local or not: from the job's results file, or else from
    its metrics events.
    """
    path = png_target(output or Path(f"{job_id}-loss.png"), force=force)  # before any work
    metrics = job_metrics(service_for(backend), job_id)
    save_png(loss_figure(metrics), path, force=force)
    rows = metrics.rows
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    valid = [r["valid_loss"] for r in rows if "valid_loss" in r]
    summary = f"{metrics.steps:,} steps"
    if train:
        summary += f", training loss {train[0]:.3f} → {train[-1]:.3f}"
    if valid:
        summary += f", validation loss {valid[0]:.3f} → {valid[-1]:.3f}"
    render.out.print(f"Wrote {path} ({summary}; from the {metrics.source})")
