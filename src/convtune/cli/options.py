"""Options shared by several commands, defined once so their meaning cannot drift apart.

`prepare`'s options come from their one definition (`dataset/prepare_options.py`), as the web
page's do: `prepare_flags` makes every one of them a flag; `token_options` gives `check` the
three it shares with `prepare`.
"""

from __future__ import annotations

import click

from ..dataset.prepare_options import ALL, BY_NAME, OPTIONS, PrepareOption


def _all_or_int(option: PrepareOption):
    def convert(ctx, param, value):
        if value is None or str(value).lower() == ALL:
            return ALL if value is not None else None
        try:
            return int(value)
        except ValueError:
            raise click.BadParameter(f"a number, or '{ALL}'") from None

    return convert


def flag(option: PrepareOption):
    """The click option of one prepare option: its flag, type, default and help from there;
    its range is checked by `assemble`, with the same words the page's request gets."""
    default = option.default
    if option.kind is bool:
        decls = option.cli or (f"{option.flag}/--no-{option.flag[2:]}" if default else option.flag)
        return click.option(decls, option.name, default=default, show_default=True,
                            is_flag=True, help=option.help)  # fmt: skip
    extra: dict = {}
    if option.choices:
        extra["type"] = click.Choice(option.choices)
    elif option.all:
        extra["callback"] = _all_or_int(option)
        default = ALL if default is None else str(default)
    elif option.kind in (int, float):
        extra["type"] = option.kind
    return click.option(
        option.cli or option.flag,
        option.name,
        default=default,
        show_default=default is not None,
        help=option.help,
        **extra,
    )


def prepare_flags(f):
    """Every prepare option as a flag, in their declared order."""
    for option in reversed(OPTIONS):
        f = flag(option)(f)
    return f


def token_options(f):
    """--model, --max-tokens and --price-per-1m, as prepare and check both take them."""
    for name in ("price_per_1m", "max_tokens", "model"):
        f = flag(BY_NAME[name])(f)
    return f
