"""`convtune models ...`: list and delete fine-tuned models."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from . import render
from .backend import Backend, backend_option, service_class, service_for
from .deleting import MODELS, delete_subcommand
from .tables import print_table, when

URGENT_DAYS = 30  # a shutdown closer than this is printed in red


@click.group(
    epilog="""
\b
Examples:
  convtune models list
  convtune models delete ft:SmolLM2-135M-Instruct:support:ftjob-abc123
  convtune models delete --all --dry-run --backend openai
"""
)
def models() -> None:
    """List and delete fine-tuned models."""


@models.command(
    "list",
    epilog="""
\b
Examples:
  convtune models list
  convtune models list --include-base
  convtune models list --backend openai --include-base
  convtune models list --backend openai --shutdowns shutdowns.json --json
""",
)
@click.option(
    "--include-base",
    is_flag=True,
    help="Also the base models jobs and chats start from (locally: SmolLM2-135M-Instruct and"
    " those trained from or converted here).",
)
@click.option(
    "--shutdowns",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help='--backend openai: a JSON table of OpenAI\'s shutdown dates, {"shutdowns": {"gpt-4o-mini":'
    ' "2027-01-14"}, "new_jobs_until": "2027-01-06"}, over the built-in one (default:'
    " openai-shutdowns.json in the data directory, if there).",
)
@click.option("--json", "as_json", is_flag=True)
@backend_option
def list_models(
    include_base: bool, shutdowns: Path | None, as_json: bool, backend: Backend
) -> None:
    """Fine-tuned models, newest first (remote ones with their shutdown dates).

    On --backend openai each model shows its base model, the day OpenAI shuts it down and the
    days left (red under 30); a last line says until when OpenAI takes new fine-tuning jobs.
    """
    remote = service_class(backend).capabilities.remote
    if shutdowns is not None and not remote:
        raise click.UsageError("--shutdowns is an option of --backend openai")
    if remote:
        from ..openai_backend import catalog

        table = catalog.load_table(shutdowns)  # a bad file fails before the service is asked
        today = catalog.current_date()
    service = service_for(backend)
    found = service.models.list()
    if not include_base and service.capabilities.lists_base_models:
        found = [m for m in found if m.id.startswith("ft:")]
    # local models are this machine's: nobody retires them
    dates = [catalog.retirement(m.id, today, table) for m in found] if remote else None
    if as_json:
        data = [m.to_dict() | (dates[i].to_dict() if dates else {}) for i, m in enumerate(found)]
        listing: dict = {"object": "list", "data": data}
        if remote:
            listing["new_jobs_until"] = table.new_jobs_until.isoformat()
        render.print_json(listing)
        return
    if not found:
        render.out.print("No fine-tuned models yet.")
    else:
        _models_table(service, found, dates)
    if remote:
        render.out.print(_new_jobs_line(table.new_jobs_until, today))


def _models_table(service, found: list, dates: list | None) -> None:
    owned = service.ownership()
    table = Table(box=None, padding=(0, 2))
    table.add_column("model")
    table.add_column("created")
    if owned is not None:
        table.add_column("owned by")
        table.add_column("by convtune")
    if dates is not None:
        table.add_column("base")
        table.add_column("shuts down")
        table.add_column("days left", justify="right")
    for i, m in enumerate(found):
        row = [escape(m.id), when(m.created)]
        if owned is not None:
            row += [escape(m.owned_by), "yes" if owned.has_model(m.id) else ""]
        if dates is not None:
            row += _retirement_cells(dates[i])
        table.add_row(*row)
    print_table(table)


def _urgent(days: int) -> bool:
    return days < URGENT_DAYS


def _retirement_cells(r) -> list[str]:
    base = escape(r.base) if r.base else "—"
    if r.shuts_down is None:
        return [base, "unknown", "unknown"]
    days = str(r.days_left) if r.days_left >= 0 else "shut down"
    if _urgent(r.days_left):
        return [base, f"[red]{r.shuts_down.isoformat()}[/]", f"[red]{days}[/]"]
    return [base, r.shuts_down.isoformat(), days]


def _new_jobs_line(until, today) -> str:
    days = (until - today).days
    if days <= 0:
        return f"[red]OpenAI stopped accepting new fine-tuning jobs on {until.isoformat()}.[/]"
    left = f"{days} day{'s' if days != 1 else ''} from now"
    left = f"[red]{left}[/]" if _urgent(days) else left
    return f"OpenAI stops accepting new fine-tuning jobs on {until.isoformat()} ({left})."


models.add_command(
    delete_subcommand(
        MODELS,
        "Delete a fine-tuned model, or --all of them (only convtune's, by default). Base models"
        " are never deleted; locally the model's files go too.",
        [
            "convtune models delete ft:SmolLM2-135M-Instruct:support:ftjob-abc123",
            "convtune models delete --all --dry-run --backend openai",
        ],
    )
)
