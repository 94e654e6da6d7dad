"""`convtune serve`: the OpenAI fine-tuning API over the local backend (stub, being built)."""

from __future__ import annotations

import click


@click.command()
def serve() -> None:
    """Serve the local backend as an OpenAI-compatible API."""
    raise click.ClickException("convtune serve is not built yet")
