"""What `convtune eval` shows while it runs and when it ends: a progress bar per model, and the
result as tables (each grader's mean per model, the differences with their intervals, the
verdict), as `follow_view` shows a job."""

from __future__ import annotations

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..dataset.findings import counted
from ..errors import TransientError
from ..evaluation.results import EvalResult
from ..evaluation.run import EvalProgress
from ..evaluation.targets import Target
from . import render
from .tables import print_table


class EvalProgressBar:
    """A progress bar per model on stderr (a terminal only), and retries as yellow lines."""

    def __enter__(self) -> EvalProgress:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=render.err,
            transient=True,
            disable=not render.err.is_terminal,
        )
        self.bar.__enter__()
        tasks: dict[str, int] = {}

        def model(target: Target, total: int) -> None:
            tasks[target.label] = self.bar.add_task(escape(target.label), total=total)

        def answer(target: Target, prompt, answer) -> None:
            self.bar.advance(tasks[target.label])

        def retry(error: TransientError, delay: float) -> None:
            render.err.print(
                f"[yellow]{escape(str(error))}; trying again in {delay:.0f} s[/]", soft_wrap=True
            )

        return EvalProgress(model=model, answer=answer, retry=retry)

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


def show_result(result: EvalResult) -> None:
    """The summary table: per model, each metric's mean and interval, latency, speed, cost."""
    out = render.out
    out.print(
        f"{counted(result.example_count, 'example')} of {result.data}; 95% bootstrap intervals"
        f" (seed {result.seed})",
        highlight=False,
    )
    table = Table(box=None, padding=(0, 2))
    table.add_column("model", no_wrap=True)
    for name in result.graders:
        table.add_column(name, justify="right")
    for column in ("valid loss", "p50 s", "p90 s", "tok/s", "cost", "errors"):
        table.add_column(column, justify="right")
    for m in result.models:
        row = [escape(m.model) + (f" [dim]({escape(m.engine)})[/]" if m.engine else "")]
        for name in result.graders:
            i = m.metrics.get(name)
            row.append("—" if i is None else f"{i.mean:.3f} [{i.low:.3f}, {i.high:.3f}]")
        row += [
            number_cell(m.valid_loss, "{:.3f}"),
            number_cell(m.latency_p50, "{:.2f}"),
            number_cell(m.latency_p90, "{:.2f}"),
            number_cell(m.tokens_per_second, "{:.1f}"),
            number_cell(m.cost_usd, "${:.4f}"),
            f"[red]{m.errors}[/]" if m.errors else "0",
        ]
        table.add_row(*row)
    print_table(table)
    if result.differences:
        out.print()
        diff = Table(box=None, padding=(0, 2))
        for column in ("metric", "model", "minus", "difference [95% interval]", ""):
            diff.add_column(column)
        for d in result.differences:
            i = d.interval
            verdict = "better" if i.low > 0 else "worse" if i.high < 0 else "no clear difference"
            colour = {"better": "green", "worse": "red"}.get(verdict, "dim")
            diff.add_row(
                d.metric,
                escape(d.b),
                escape(d.a),
                f"{i.mean:+.3f} [{i.low:+.3f}, {i.high:+.3f}]",
                f"[{colour}]{verdict}[/]",
            )
        print_table(diff)


def number_cell(value: float | None, form: str) -> str:
    return "—" if value is None else form.format(value)
