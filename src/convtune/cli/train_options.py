"""`convtune train`'s training flags, made from `TrainOptions` (defined once, in the library).

Each field becomes one option: `n_epochs` is `--n-epochs`, its help and range are the field's
`Spec`, checked while parsing (before any file is uploaded), and a flag for a boolean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..service.training_options import AUTO, Spec, TrainOptions, default, specs


class Auto(click.ParamType):
    """'auto' or a number in range, checked while parsing: before any file is uploaded."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.name = f"auto|{'N' if spec.kind is int else 'X'}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == AUTO:
            return value
        if isinstance(value, str):
            try:
                value = self.spec.kind(value)
            except ValueError:
                self.fail(f"{value!r} is not {self.spec.expected()}", param, ctx)
        if self.spec.problem("value", value) is not None:
            self.fail(f"{value!r} is not {self.spec.expected()}", param, ctx)
        return value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _type(spec: Spec) -> click.ParamType | type:
    if spec.auto:
        return Auto(spec)
    if spec.choices:
        return click.Choice(spec.choices)
    if spec.kind is int:
        return click.IntRange(spec.low, spec.high)
    if spec.kind is float:
        return click.FloatRange(spec.low, spec.high)
    return spec.kind


def train_options(f: Callable) -> Callable:
    """Add one click option per `TrainOptions` field (in declaration order in --help)."""
    for name, spec in reversed(specs().items()):
        value = default(name)
        if spec.kind is bool:  # on by default: --no-NAME turns it off
            names = f"{flag(name)}/--no-{flag(name)[2:]}" if value else flag(name)
            f = click.option(names, name, is_flag=True, default=value, help=spec.help)(f)
            continue
        f = click.option(
            flag(name),
            name,
            type=_type(spec),
            default=value,
            show_default=value is not None,
            help=spec.help,
        )(f)
    return f


def pop_train_options(kwargs: dict[str, Any]) -> TrainOptions:
    """The `TrainOptions` of a command's arguments (taken out of `kwargs`)."""
    return TrainOptions(**{name: kwargs.pop(name) for name in specs()})


def given_trainer_options(ctx: click.Context) -> list[str]:
    """The local trainer's options the user typed (even at their default value)."""
    return [
        name
        for name, spec in specs().items()
        if not (spec.hyperparameter or spec.method)
        and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
