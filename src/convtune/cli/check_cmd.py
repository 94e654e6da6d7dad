"""`convtune check`: errors, warnings, tokens and cost of a JSONL dataset."""

from __future__ import annotations

from pathlib import Path

import click

from ..check import check_file
from . import render
from .options import token_options


@click.command(
    epilog="""
\b
Examples:
  convtune check out/conversations.train.jsonl
  convtune check train.jsonl --model gpt-4.1-mini-2025-04-14 --price-per-1m 5
  convtune check out/conversations.valid.jsonl --validation --json
"""
)
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path))
@token_options
@click.option("--validation", is_flag=True, help="A validation file: no minimum size, no cost.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def check(
    ctx: click.Context,
    path: Path,
    model: str | None,
    max_tokens: int | None,
    price_per_1m: float | None,
    validation: bool,
    as_json: bool,
) -> None:
    """Check a fine-tuning JSONL file (chat, prompt-completion or sharegpt). Exit 1 on errors."""
    size = path.stat().st_size if path.is_file() else 0
    with render.progress_bar("checking", size) as update:
        report = check_file(
            path,
            model=model,
            max_tokens=max_tokens,
            price_per_1m=price_per_1m,
            training=not validation,
            progress=update,
        )
    if as_json:
        render.print_json(report.to_dict())
    else:
        render.show_check(report)
    if report.errors:
        ctx.exit(1)
