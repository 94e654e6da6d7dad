"""Terminal rendering of reports (rich): tables for people, `--json` for machines."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import replace

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..dataset.findings import Finding, counted
from ..dataset.pipeline import PrepareReport
from ..dataset.report import DatasetReport

out = Console(highlight=False, soft_wrap=True)  # ids and commands stay whole for copy-paste
err = Console(stderr=True, highlight=False)

PROGRESS_MIN_BYTES = 4 << 20  # files smaller than this are done before a bar is worth drawing


def print_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def progress_bar(label: str, total: int, *, unit_bytes: bool = True):
    """A progress bar on stderr for large inputs on a terminal; a no-op callback otherwise."""
    if not err.is_terminal or total < (PROGRESS_MIN_BYTES if unit_bytes else 50_000):
        yield None
        return
    columns = [TextColumn(label), BarColumn()]
    columns.append(DownloadColumn() if unit_bytes else TextColumn("{task.completed:,.0f}"))
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)

        def update(done: int, _total: int | None = None) -> None:
            bar.update(task, completed=done)

        yield update


def _lines(lines: list[int]) -> str:
    return ", ".join(str(n) for n in lines)


def findings_table(findings: list[Finding], where: str) -> Table | None:
    if not findings:
        return None
    table = Table(title=None, show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    table.add_column("", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_column("problem")
    table.add_column(f"first {where}", no_wrap=True)
    for f in sorted(findings, key=lambda f: f.level != "error"):
        level = "[red]error[/]" if f.level == "error" else "[yellow]warning[/]"
        message = escape(f.message) + (f" [dim]({escape(f.example)})[/]" if f.example else "")
        table.add_row(level, f"{f.count:,}", message, _lines(f.lines))
    return table


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.2f}"


def dataset_rows(table: Table, r: DatasetReport, label: str) -> None:
    label = f"{label} " if label else ""
    table.add_row(f"{label}examples", f"{r.examples:,}")
    if r.tokens is not None:
        t = r.tokens
        table.add_row(
            f"{label}tokens per example",
            f"min {t.min:,}  mean {t.mean:,.1f}  p90 {t.p90:,}  max {t.max:,}",
        )
        table.add_row(f"{label}tokens", f"{t.total:,}")


def cost_rows(table: Table, r: DatasetReport) -> None:
    if r.tokens is None:
        return
    table.add_row("counted with", f"{r.tokenizer} (model {r.model})")
    if r.context_limit:
        table.add_row("limit per example", f"{r.context_limit:,} tokens")
    if r.epochs is not None:
        table.add_row("epochs (OpenAI's auto rule)", str(r.epochs))
        table.add_row("billed tokens", f"{r.billed_tokens:,}")
        price = f" at ${r.price_per_1m:g}/1M tokens" if r.price_per_1m is not None else ""
        hint = "" if r.price_per_1m is not None else " (give --price-per-1m)"
        table.add_row("training cost", _money(r.cost) + price + hint)


def show_prepare(report: PrepareReport) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "input",
        f"{report.input}  (actors {report.actors[0]!r} → {report.actors[1]!r}"
        + (f", delimiter {report.delimiter!r}" if report.delimiter else "")
        + ")",
    )
    table.add_row("format", report.format)
    table.add_row(
        "conversations",
        f"{report.conversations:,}  (train {report.train_conversations:,},"
        f" validation {report.valid_conversations:,})",
    )
    table.add_row("replies", f"{report.replies:,}")
    extra = []
    if report.dropped:
        extra.append(f"{report.dropped:,} dropped as too long")
    if report.truncated:
        extra.append(f"{report.truncated:,} truncated")
    if report.supervised:
        extra.append(f"{report.supervised:,} supervised, with no rejected reply")
    table.add_row("examples", f"{report.examples:,}" + (f"  ({', '.join(extra)})" if extra else ""))
    warnings = report.warnings + sum(r.warnings for r in (report.train, report.valid) if r)
    table.add_row("warnings", f"{warnings:,}" + ("  (below)" if warnings else ""))
    if report.train is not None:
        dataset_rows(table, report.train, "train")
    if report.valid is not None:
        dataset_rows(table, report.valid, "validation")
    if report.train is not None:
        cost_rows(table, report.train)
    out.print(table)
    findings = list(report.findings)
    for r in (report.train, report.valid):
        if r is not None:
            findings += [replace(f, message=f"{r.path}: {f.message}") for f in r.findings]
    if findings:
        out.print()
        out.print(findings_table(findings, "input lines"))
    out.print()
    for path in report.outputs:
        out.print(f"wrote {path}")


def show_check(report: DatasetReport) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("file", report.path)
    table.add_row("format", report.format or "unknown")
    dataset_rows(table, report, "")
    cost_rows(table, report)
    out.print(table)
    if report.findings:
        out.print()
        out.print(findings_table(report.findings, "lines"))
    out.print()
    if report.errors:
        fix = "fix it" if report.errors == 1 else "fix them"
        out.print(f"[red]{counted(report.errors, 'error')}[/]: {fix} before training.")
    else:
        warnings = f", {counted(report.warnings, 'warning')}" if report.warnings else ""
        out.print("[green]no errors[/]" + warnings)
