"""`convtune prepare`: spreadsheet in, train/validation JSONL out, report on screen."""

from __future__ import annotations

from pathlib import Path

import click

from ..dataset import pipeline
from ..dataset.examples import FORMATS, LAYOUTS, ExampleOptions
from ..dataset.spreadsheet import SheetOptions
from . import render
from .options import token_options

# The defaults are the library's (its dataclasses'), as the web page's are: one place says them.
_EXAMPLES = ExampleOptions()
_PREPARE = pipeline.PrepareOptions()
_SHEET = SheetOptions()


def _context(value: str) -> int | None:
    if value.lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter("a number of messages, or 'all'") from None
    if n < 0:
        raise click.BadParameter("must be 0 or more")
    return n


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
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=_EXAMPLES.format,
    show_default=True,
    help="chat: OpenAI chat JSONL; prompt-completion: legacy GPT-3; sharegpt: Axolotl, LLaMA-Factory.",
)
@click.option(
    "--context",
    default="all" if _EXAMPLES.context is None else str(_EXAMPLES.context),
    show_default=True,
    help="Messages before each reply to include, or 'all'. 0 gives empty prompts ('voice' data).",
)
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default=_EXAMPLES.layout,
    show_default=True,
    help="turn: one example per reply; conversation: one per conversation, every reply trained.",
)
@click.option("--system", default=None, help="A system message for every chat/sharegpt example.")
@click.option(
    "--stop/--no-stop",
    default=_EXAMPLES.stop,
    show_default=True,
    help="prompt-completion: end completions with '\\n<actor 1>: ' so the model learns to stop.",
)
@click.option(
    "--valid-ratio",
    type=float,
    default=_PREPARE.valid_ratio,
    show_default=True,
    help="Share of conversations for validation (0: no validation file).",
)
@click.option(
    "--seed", type=int, default=_PREPARE.seed, show_default=True, help="Seed of the split."
)
@click.option(
    "--delimiter", default=None, help="CSV delimiter (default: detected among ; , tab |)."
)
@click.option(
    "--encoding",
    default=_SHEET.encoding,
    show_default=True,
    help="Text encoding of a CSV, e.g. cp1252.",
)
@click.option(
    "--sheet", default=None, help="Sheet of an .xlsx workbook (default: the first visible one)."
)
@click.option(
    "--separator",
    default=_SHEET.separator,
    show_default=True,
    help="Row text between conversations.",
)
@token_options
@click.option(
    "--overlong",
    type=click.Choice(pipeline.OVERLONG),
    default=_PREPARE.overlong,
    show_default=True,
    help="Examples over --max-tokens: drop them, or cut their oldest context. Always reported.",
)
@click.option(
    "--no-tokens",
    is_flag=True,
    help="Skip token counting (faster; no cost estimate, no length limit).",
)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prepare(
    input_path: Path,
    out_dir: Path,
    fmt: str,
    context: str,
    layout: str,
    system: str | None,
    stop: bool,
    valid_ratio: float,
    seed: int,
    delimiter: str | None,
    encoding: str,
    sheet: str | None,
    separator: str,
    model: str | None,
    max_tokens: int | None,
    overlong: str,
    price_per_1m: float | None,
    no_tokens: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Turn a conversation spreadsheet into train and validation JSONL files.

    Reads CSV or .xlsx (row 1: the two actors; a ### row ends a conversation), builds chat,
    prompt-completion or sharegpt examples, splits whole conversations, counts tokens and cost.
    """
    options = pipeline.PrepareOptions(
        sheet=SheetOptions(
            delimiter=delimiter, encoding=encoding, sheet=sheet, separator=separator
        ),
        examples=ExampleOptions(
            format=fmt, context=_context(context), layout=layout, system=system, stop=stop
        ),
        valid_ratio=valid_ratio,
        seed=seed,
        model=model,
        max_tokens=max_tokens,
        overlong=overlong,
        price_per_1m=price_per_1m,
        force=force,
        count_tokens=not no_tokens,
    )
    size = input_path.stat().st_size if input_path.is_file() else 0
    with render.progress_bar("preparing", size) as update:
        report = pipeline.prepare(input_path, out_dir, options, progress=update)
    if as_json:
        render.print_json(report.to_dict())
    else:
        render.show_prepare(report)
