"""Which `FineTuningService` a command talks to."""

from __future__ import annotations

import click

BACKENDS = ("local",)


def backend_option(f):
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="local",
        show_default=True,
        help="local: open models on this machine.",
    )(f)


def service_for(backend: str):
    from ..local.service import LocalService

    return LocalService()
