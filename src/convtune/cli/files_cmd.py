"""`convtune files ...`: list, upload, delete (stub, being built)."""

from __future__ import annotations

import click


@click.group()
def files() -> None:
    """List, upload and delete files."""
