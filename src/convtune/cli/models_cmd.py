"""`convtune models ...`: list and delete fine-tuned models."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from . import render
from .backend import Backend, backend_option, service_for
from .deleting import MODELS, delete_subcommand
from .tables import print_table, when


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


@models.command("list", epilog="\b\nExamples:\n  convtune models list\n  convtune models list --backend openai --include-base")
@click.option("--include-base", is_flag=True, help="Also base models (remote services list them).")
@click.option("--json", "as_json", is_flag=True)
@backend_option
def list_models(include_base: bool, as_json: bool, backend: Backend) -> None:
    """Fine-tuned models, newest first."""
    service = service_for(backend)
    found = service.list_models()
    if not include_base and service.capabilities.lists_base_models:
        found = [m for m in found if m.id.startswith("ft:")]
    if as_json:
        render.print_json({"object": "list", "data": [m.to_dict() for m in found]})
        return
    if not found:
        render.out.print("No fine-tuned models yet.")
        return
    owned = service.ownership()
    table = Table(box=None, padding=(0, 2))
    table.add_column("model")
    table.add_column("created")
    if owned is not None:
        table.add_column("owned by")
        table.add_column("by convtune")
    for m in found:
        row = [escape(m.id), when(m.created)]
        if owned is not None:
            row += [escape(m.owned_by), "yes" if owned.has_model(m.id) else ""]
        table.add_row(*row)
    print_table(table)


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
