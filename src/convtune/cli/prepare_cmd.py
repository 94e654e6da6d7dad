"""`convtune prepare`: spreadsheet in, train/validation JSONL out, report on screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..dataset import pipeline
from ..dataset.prepare_options import assemble
from . import render
from .options import prepare_flags


@click.command(
    short_help="Turn a spreadsheet into train and validation JSONL.",
    epilog="""
\b
Examples:
  convtune prepare conversations.csv -o out/
  convtune prepare support.xlsx --sheet Support --format prompt-completion --context 0
  convtune prepare chats.csv --layout conversation --system "You are Nimbus." --valid-ratio 0.1
""",
)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out-dir",
    type=click.Path(path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Folder for INPUT-STEM.train.jsonl and .valid.jsonl.",
)
@prepare_flags
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prepare(input_path: Path, out_dir: Path, as_json: bool, **values: Any) -> None:
    """Turn a conversation spreadsheet into train and validation JSONL files.

    Reads CSV or .xlsx (row 1: the two actors; a ### row ends a conversation), builds chat,
    prompt-completion or sharegpt examples, splits whole conversations, counts tokens and cost.
    """
    options = assemble(values)
    size = input_path.stat().st_size if input_path.is_file() else 0
    with render.progress_bar("preparing", size) as update:
        report = pipeline.prepare(input_path, out_dir, options, progress=update)
    if as_json:
        render.print_json(report.to_dict())
    else:
        render.show_prepare(report)
