"""`convtune plot JOB`: a PNG of training and validation loss (stub, being built)."""

from __future__ import annotations

import click


@click.command()
@click.argument("job_id")
def plot(job_id: str) -> None:
    """Plot a job's training and validation loss."""
    raise click.ClickException("convtune plot is not built yet")
