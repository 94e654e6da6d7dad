"""Deleting safely, for `files delete` and `models delete`.

One id: asked with y/N (or --yes). `--all`: the list of what would go is printed, then the count
must be typed back (or --yes; --dry-run only lists). On a remote service only what convtune
created is touched unless --include-foreign; base models are never deleted.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.markup import escape
from rich.table import Table

from ..errors import Conflict, ConvtuneError
from . import render
from .tables import print_table


def ownership(service):
    """What convtune created on `service`; None when everything is its own (the local backend)."""
    find = getattr(service, "ownership", None)
    return find() if find is not None else None


def delete_options(f):
    f = click.option(
        "--include-foreign",
        is_flag=True,
        help="Also objects convtune did not create (remote services only).",
    )(f)
    f = click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")(f)
    f = click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")(f)
    return click.option(
        "--all", "delete_all", is_flag=True, help="Delete every one (asks first, see --dry-run)."
    )(f)


def check_arguments(object_id: str | None, delete_all: bool, what: str) -> None:
    if delete_all and object_id:
        raise click.UsageError(f"give one {what} id or --all, not both")
    if not delete_all and not object_id:
        raise click.UsageError(f"give the {what} id to delete, or --all")


def refuse_foreign(object_id: str, owned: bool, what: str) -> None:
    if not owned:
        raise Conflict(
            f"{object_id} is a {what} convtune did not create",
            hint="add --include-foreign to delete it",
        )


def confirm_one(object_id: str, yes: bool, dry_run: bool, question: str) -> bool:
    """True to go ahead; --dry-run prints what would go and says no."""
    if dry_run:
        render.out.print(f"Would delete {object_id}.", highlight=False)
        return False
    if not yes:
        click.confirm(question, abort=True, err=True)
    return True


def delete_many(
    rows: list[tuple[str, ...]],
    columns: tuple[str, ...],
    what: str,
    delete: Callable[[str], None],
    *,
    yes: bool,
    dry_run: bool,
    skipped: str = "",
) -> None:
    """List `rows` (the id first), ask for the count typed back, delete each; exit 1 on failures."""

    if skipped:
        render.err.print(skipped, highlight=False)
    if not rows:
        render.out.print(f"No {what} to delete.")
        return
    table = Table(box=None, padding=(0, 2))
    for column in columns:
        table.add_column(column, no_wrap=column == columns[0])
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    print_table(table)
    count = len(rows)
    if dry_run:
        render.out.print(f"Would delete {_n(count, what)} (--dry-run: nothing deleted).")
        return
    if not yes:
        typed = click.prompt(
            f"Delete {_n(count, what)}? Type {count} to confirm",
            default="",
            show_default=False,
            err=True,
        )
        if typed.strip() != str(count):
            raise ConvtuneError("not confirmed: nothing was deleted")
    failed = 0
    for row in rows:
        try:
            delete(row[0])
        except ConvtuneError as error:
            failed += 1
            render.err.print(f"could not delete {row[0]}: {error}", highlight=False, markup=False)
    render.out.print(f"Deleted {count - failed} of {_n(count, what)}.")
    if failed:
        raise click.exceptions.Exit(1)


def _n(count: int, what: str) -> str:
    """'1 file', '3 files' (`what` is the plural)."""
    return f"{count} {what if count != 1 else what.removesuffix('s')}"
