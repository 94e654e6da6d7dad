"""`convtune files ...`: list, upload, download and delete the files of a backend."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..errors import OutputExistsError
from . import render
from .backend import Backend, backend_option, service_for
from .deleting import FILES, delete_subcommand
from .tables import print_table, when


@click.group(
    epilog="""
\b
Examples:
  convtune files list --backend openai
  convtune files upload out/x.train.jsonl --backend openai
  convtune files download file-abc123 -o copy.jsonl --backend openai
  convtune files delete file-abc123 --backend openai
  convtune files delete --all --dry-run --backend openai
"""
)
def files() -> None:
    """List, upload, download and delete files."""


@files.command(
    "list", epilog="\b\nExamples:\n  convtune files list\n  convtune files list --backend openai"
)
@click.option("--purpose", default=None, help="Only files of this purpose (fine-tune...).")
@click.option("--json", "as_json", is_flag=True, help="Print OpenAI-shaped JSON.")
@backend_option
def list_files(purpose: str | None, as_json: bool, backend: Backend) -> None:
    """Files, newest first; on a remote service, which ones convtune uploaded."""
    service = service_for(backend)
    found = sorted(service.files.list(), key=lambda f: f.created_at, reverse=True)
    if purpose:
        found = [f for f in found if f.purpose == purpose]
    if as_json:
        render.print_json({"object": "list", "data": [f.to_dict() for f in found]})
        return
    if not found:
        render.out.print("No files.")
        return
    owned = service.ownership()
    table = Table(box=None, padding=(0, 2))
    columns = ["file", "name", "bytes", "purpose", "status", "created"]
    if owned is not None:
        columns.append("by convtune")
    for column in columns:
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for f in found:
        row = [f.id, escape(f.filename), f"{f.bytes:,}", f.purpose, f.status, when(f.created_at)]
        if owned is not None:
            row.append("yes" if owned.has_file(f.id) else "")
        table.add_row(*row)
    print_table(table)


@files.command(
    "upload",
    epilog="\b\nExample:\n  convtune files upload out/conversations.train.jsonl --backend openai",
)
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--purpose", default="fine-tune", show_default=True)
@click.option(
    "--no-reuse",
    is_flag=True,
    help="Upload even if an identical file is there (remote services match name, size and purpose).",
)
@backend_option
def upload(path: Path, purpose: str, no_reuse: bool, backend: Backend) -> None:
    """Upload a file (a fine-tuning file is checked first); print its id."""
    service = service_for(backend)
    size = path.stat().st_size if path.is_file() else 0
    with render.progress_bar(f"uploading {path.name}", size) as update:
        uploaded = service.files.upload(path, purpose, reuse=not no_reuse, progress=update)
    render.out.print(uploaded.id)


@files.command(
    "download",
    epilog="\b\nExample:\n  convtune files download file-abc123 -o results.csv --backend openai",
)
@click.argument("file_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write here (default: standard output).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@backend_option
def download(file_id: str, output: Path | None, force: bool, backend: Backend) -> None:
    """A file's content (OpenAI lets only results files be downloaded)."""
    write(service_for(backend).files.content(file_id), output, force)


def write(content: bytes, output: Path | None, force: bool) -> None:
    if output is None:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return
    if output.exists() and not force:
        raise OutputExistsError("already exists", path=output, hint="add --force to overwrite")
    output.write_bytes(content)
    render.err.print(f"wrote {output} ({len(content):,} bytes)", highlight=False, markup=False)


files.add_command(
    delete_subcommand(
        FILES,
        "Delete one file, or --all of them (only those convtune uploaded, by default).",
        [
            "convtune files delete file-abc123",
            "convtune files delete --all --dry-run --backend openai",
        ],
    )
)
