"""Deleting safely: one flow for `files delete` and `models delete`.

One id: asked with y/N (or --yes). `--all`: the list of what would go is printed, then the count
must be typed back (or --yes; --dry-run only lists). On a service where convtune is not alone
(`service.ownership()` is not None), only what convtune created is touched unless
--include-foreign; base models are never deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..errors import Conflict, ConvtuneError
from ..service.contract import FineTuningService, Ownership
from . import render
from .backend import Backend, backend_option, service_for
from .tables import print_table, when


@dataclass(frozen=True)
class Kind:
    """One kind of object that can be deleted, and how the flow shows and finds it."""

    noun: str  # "file", "model"
    made: str  # what convtune did to own one: "upload", "make"
    columns: tuple[str, ...]  # of the --all table; the id first
    row: Callable[[Any], tuple[str, ...]]
    listing: Callable[[FineTuningService], list]  # the objects --all may delete
    get: Callable[[FineTuningService, str], Any]  # one object: NotFound before any question
    delete: Callable[[FineTuningService, str], None]
    owned: Callable[[Ownership, str], bool]
    question: Callable[[FineTuningService, Any], str]
    check: Callable[[FineTuningService, str], None] = lambda service, object_id: None


def _files(service: FineTuningService) -> list:
    return sorted(service.files.list(), key=lambda f: f.created_at)


def _fine_tuned(service: FineTuningService) -> list:
    found = service.models.list()
    if service.capabilities.lists_base_models:
        found = [m for m in found if m.id.startswith("ft:")]
    return found


def _not_a_base_model(service: FineTuningService, model_id: str) -> None:
    if service.capabilities.lists_base_models and not model_id.startswith("ft:"):
        raise ConvtuneError(
            f"{model_id} is a base model: convtune deletes only fine-tuned (ft:) models"
        )


FILES = Kind(
    noun="file",
    made="upload",
    columns=("file", "name", "bytes", "purpose", "created"),
    row=lambda f: (f.id, f.filename, f"{f.bytes:,}", f.purpose, when(f.created_at)),
    listing=_files,
    get=lambda service, file_id: service.files.get(file_id),
    delete=lambda service, file_id: service.files.delete(file_id),
    owned=Ownership.has_file,
    question=lambda service, f: f"Delete {f.id} ({f.filename})?",
)

MODELS = Kind(
    noun="model",
    made="make",
    columns=("model", "created", "owned by"),
    row=lambda m: (m.id, when(m.created), m.owned_by),
    listing=_fine_tuned,
    get=lambda service, model_id: service.models.get(model_id),
    delete=lambda service, model_id: service.models.delete(model_id),
    owned=Ownership.has_model,
    question=lambda service, m: (
        f"Delete {m.id}" + (" and its files?" if service.capabilities.deletes_model_files else "?")
    ),
    check=_not_a_base_model,
)


def delete_subcommand(kind: Kind, summary: str, examples: list[str]) -> click.Command:
    """The `delete` subcommand of a group (`files`, `models`): one id, or --all."""

    @click.command(
        "delete",
        help=summary,
        epilog="\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples),
    )
    @click.argument("object_id", metavar=f"[{kind.noun.upper()}_ID]", required=False)
    @click.option("--all", "delete_all", is_flag=True, help="Delete every one (asks first).")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
    @click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
    @click.option(
        "--include-foreign",
        is_flag=True,
        help="Also objects convtune did not create (remote services only).",
    )
    @backend_option
    def delete(
        object_id: str | None,
        delete_all: bool,
        yes: bool,
        dry_run: bool,
        include_foreign: bool,
        backend: Backend,
    ) -> None:
        delete_command(
            service_for(backend),
            kind,
            object_id,
            delete_all=delete_all,
            yes=yes,
            dry_run=dry_run,
            include_foreign=include_foreign,
        )

    return delete


def delete_command(
    service: FineTuningService,
    kind: Kind,
    object_id: str | None,
    *,
    delete_all: bool,
    yes: bool,
    dry_run: bool,
    include_foreign: bool,
) -> None:
    """The whole flow of `files delete` / `models delete`, for one id or --all."""
    if delete_all and object_id:
        raise click.UsageError(f"give one {kind.noun} id or --all, not both")
    if not delete_all and not object_id:
        raise click.UsageError(f"give the {kind.noun} id to delete, or --all")
    owned = service.ownership()
    if object_id:
        kind.check(service, object_id)
        found = kind.get(service, object_id)  # a missing id fails before the question
        if owned is not None and not include_foreign and not kind.owned(owned, object_id):
            raise Conflict(
                f"{object_id} is a {kind.noun} convtune did not create",
                hint="add --include-foreign to delete it",
            )
        if dry_run:
            render.out.print(f"Would delete {object_id}.", highlight=False)
            return
        if not yes:
            click.confirm(kind.question(service, found), abort=True, err=True)
        kind.delete(service, object_id)
        render.out.print(f"Deleted {object_id}.", highlight=False)
        return
    found = kind.listing(service)
    chosen = [o for o in found if owned is None or include_foreign or kind.owned(owned, o.id)]
    if len(chosen) < len(found):
        render.err.print(
            f"Leaving {_n(len(found) - len(chosen), kind.noun)} convtune did not {kind.made}"
            " (--include-foreign adds them).",
            highlight=False,
        )
    _delete_many(service, kind, [kind.row(o) for o in chosen], yes=yes, dry_run=dry_run)


def _delete_many(
    service: FineTuningService, kind: Kind, rows: list[tuple[str, ...]], *, yes: bool, dry_run: bool
) -> None:
    """List `rows` (the id first), ask for the count typed back, delete each; exit 1 on failures."""
    if not rows:
        render.out.print(f"No {kind.noun}s to delete.")
        return
    table = Table(box=None, padding=(0, 2))
    for column in kind.columns:
        table.add_column(column, no_wrap=column == kind.columns[0])
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    print_table(table)
    count = len(rows)
    if dry_run:
        render.out.print(f"Would delete {_n(count, kind.noun)} (--dry-run: nothing deleted).")
        return
    if not yes:
        typed = click.prompt(
            f"Delete {_n(count, kind.noun)}? Type {count} to confirm",
            default="",
            show_default=False,
            err=True,
        )
        if typed.strip() != str(count):
            raise ConvtuneError("not confirmed: nothing was deleted")
    failed = 0
    for row in rows:
        try:
            kind.delete(service, row[0])
        except ConvtuneError as error:
            failed += 1
            render.err.print(f"could not delete {row[0]}: {error}", highlight=False, markup=False)
    render.out.print(f"Deleted {count - failed} of {_n(count, kind.noun)}.")
    if failed:
        raise click.exceptions.Exit(1)


def _n(count: int, noun: str) -> str:
    """'1 file', '3 files'."""
    return f"{count} {noun}{'s' if count != 1 else ''}"
