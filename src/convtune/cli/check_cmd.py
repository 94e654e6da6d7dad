"""`convtune check`: errors, warnings, tokens and cost of a JSONL dataset."""

from __future__ import annotations

from pathlib import Path

import click

from ..dataset.check import check_file
from ..errors import ConvtuneError
from ..metrics.charts import png_target, save_png
from ..metrics.tokens_chart import tokens_figure
from . import render
from .options import token_options


@click.command(
    short_help="Check a JSONL dataset: errors, tokens, cost.",
    epilog="""
\b
Examples:
  convtune check out/conversations.train.jsonl
  convtune check train.jsonl --model gpt-4.1-mini-2025-04-14 --price-per-1m 5
  convtune check out/conversations.valid.jsonl --validation --json
  convtune check out/conversations.train.jsonl --plot tokens.png   # histogram of lengths
""",
)
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path))
@token_options
@click.option("--validation", is_flag=True, help="A validation file: no minimum size, no cost.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a PNG histogram of tokens per example, the context limit marked.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
@click.pass_context
def check(
    ctx: click.Context,
    path: Path,
    model: str | None,
    max_tokens: int | None,
    price_per_1m: float | None,
    validation: bool,
    as_json: bool,
    plot_path: Path | None,
    force: bool,
) -> None:
    """Check a fine-tuning JSONL file: errors, warnings, tokens and cost.

    Detects the format (chat, prompt-completion or sharegpt) and gives every problem with its
    line number, before anyone pays for training. Exits 1 when the file has errors.
    """
    if plot_path is not None:
        png_target(plot_path, force=force)  # before reading a big file
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
    if plot_path is not None:
        if report.tokens is None:
            raise ConvtuneError(
                "no token counts to plot", path=plot_path, hint="the file has no valid example"
            )
        save_png(tokens_figure(report), plot_path, force=force)
        (render.err if as_json else render.out).print(f"Wrote {plot_path}")
    if report.errors:
        ctx.exit(1)
