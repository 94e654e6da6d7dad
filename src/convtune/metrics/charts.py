"""Pictures people would rather look at than read: a run's loss, a dataset's lengths.

Pure functions, no display: `loss_figure` and `tokens_figure` return a matplotlib `Figure` made
without pyplot (no global state, no GUI backend; a notebook shows it inline, `save_png` writes it
with Agg). The loss comes from `metrics.job_metrics` (or any metrics rows), the lengths from a
`check_file` report.

    metrics = convtune.job_metrics(service, "ftjob-abc123")
    convtune.save_png(convtune.loss_figure(metrics), "loss.png")
    report = convtune.check_file("train.jsonl")
    convtune.save_png(convtune.tokens_figure(report), "tokens.png")
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConvtuneError, OutputExistsError
from .job_metrics import JobMetrics, NoMetrics
from .results_csv import in_step_order, metrics_row

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with convtune
    from matplotlib.figure import Figure

    from ..dataset.report import DatasetReport

TRAIN = "#1f77b4"  # blue
VALID = "#e4572e"  # orange-red: tells apart from blue for most colour-blind readers too
LIMIT = "#c0392b"
GREY = "0.45"
SIZE = (9.0, 5.0)  # inches; at 120 dpi a 1080 x 600 PNG, readable in a README or a notebook
DPI = 120


# -- drawing -------------------------------------------------------------------------------------


@functools.cache
def _figure_class() -> type:
    from matplotlib.figure import Figure

    class PictureFigure(Figure):
        """A figure that a notebook shows inline by itself (no pyplot, no backend needed)."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=DPI, facecolor="white")
            return buffer.getvalue()

    return PictureFigure


def _figure() -> Figure:
    return _figure_class()(figsize=SIZE, dpi=DPI, layout="constrained")


def _style(ax) -> None:
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _thousands(axis) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _titles(fig, ax, title: str, parts: list[str]) -> None:
    """A bold title, and under it the facts, ' · ' between them, on lines that fit the width."""
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + 5 + len(part) > 110:
            lines.append(part)
        else:
            lines[-1] += ("  ·  " if lines[-1] else "") + part
    fig.suptitle(title, x=0.01, ha="left", fontsize=13, fontweight="bold")
    ax.set_title("\n".join(lines), loc="left", fontsize=9, color=GREY)


def smooth(values: list[float], window: int) -> list[float]:
    """A centred moving average that skips NaN (left-out outliers); near the ends the window
    shrinks to the points there are."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    present = ~np.isnan(data)
    sums = np.concatenate([[0.0], np.cumsum(np.where(present, data, 0.0))])
    counts = np.concatenate([[0], np.cumsum(present)])
    index = np.arange(len(data))
    low = np.maximum(index - window // 2, 0)
    high = np.minimum(index + window // 2 + 1, len(data))
    n = counts[high] - counts[low]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[high] - sums[low]) / np.maximum(n, 1), np.nan).tolist()


def smoothing_window(n: int) -> int:
    """Steps averaged in the smoothed training loss: none under 12 steps, then about n/30."""
    if n < 12:
        return 1
    return max(3, n // 30) | 1  # odd: centred


def _ceiling(train: list[float], valid: list[float]) -> float | None:
    """Where to cut the y axis when a few huge values (often the first steps) would flatten
    the rest of the curve: just above the 98th percentile; None when nothing towers."""
    import numpy as np

    if len(train) < 30:
        return None
    cap = max(float(np.percentile(train, 98)), max(valid, default=0.0))
    if max(train) <= cap * 1.5:
        return None
    low = min(*train, *valid)
    return cap + (cap - low) * 0.08


def loss_figure(
    metrics: JobMetrics | Iterable[Mapping[str, Any]],
    *,
    epoch_ends: Iterable[int] | None = None,
    title: str | None = None,
) -> Figure:
    """Training loss per step (raw, and smoothed once there are enough steps), validation loss
    as points, epoch boundaries as dotted lines; steps on x, loss in nats per token on y."""
    from matplotlib.lines import Line2D

    if isinstance(metrics, JobMetrics):
        rows, job_id, model = metrics.rows, metrics.job_id, metrics.model
        ends = list(metrics.epoch_ends if epoch_ends is None else epoch_ends)
    else:
        rows = in_step_order(r for r in map(metrics_row, metrics) if r is not None)
        job_id = model = None
        ends = list(epoch_ends or [])
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    valid = [(r["step"], r["valid_loss"]) for r in rows if "valid_loss" in r]
    full = [(r["step"], r["full_valid_loss"]) for r in rows if "full_valid_loss" in r]
    if not train and not valid and not full:
        raise NoMetrics("no loss values to plot")
    fig = _figure()
    ax = fig.add_subplot()
    _style(ax)
    top = _ceiling([v for _, v in train], [v for _, v in (*valid, *full)])

    tail = None
    if train:
        steps, losses = zip(*train, strict=True)
        window = smoothing_window(len(losses))
        ax.plot(
            steps,
            losses,
            color=TRAIN,
            alpha=1.0 if window == 1 else 0.3,
            linewidth=1.6 if window == 1 else 0.9,
            marker="o" if len(losses) <= 40 else None,
            markersize=5 if window == 1 else 3,
            label="training loss (each step)",
            zorder=2,
        )
        kept = [v if top is None or v <= top else math.nan for v in losses]
        smoothed = smooth(kept, window)
        tail = smoothed[-1]
        if window > 1:
            ax.plot(
                steps,
                smoothed,
                color=TRAIN,
                linewidth=2.4,
                label=f"training loss (average of {window} steps)",
                zorder=3,
            )
    for points, label, marker, size, joined in (
        (valid, "validation loss", "o", 6, True),
        (full, "validation loss, whole set", "D", 7, False),
    ):
        if points:
            steps_v, losses_v = zip(*points, strict=True)
            many = len(points) > 60
            ax.plot(
                steps_v,
                losses_v,
                color=VALID,
                linestyle=("-" if many else "--") if joined else "none",
                linewidth=0.9 if many else 1.0,
                alpha=0.8 if joined else 1.0,
                marker=None if many and joined else marker,
                markersize=size,
                markeredgecolor="white",
                markeredgewidth=0.8,
                label=label,
                zorder=4 if joined else 5,
            )

    all_steps = [s for s, _ in (*train, *valid, *full)]
    first, last = min(all_steps), max(all_steps)
    _epochs(ax, [e for e in ends if first <= e < last], first, last)
    pad = max(0.5, (last - first) * 0.02)
    ax.set_xlim(first - pad, last + pad)
    _thousands(ax.xaxis)
    ax.set_xlabel("training step (one optimizer update per batch)")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    handles, _ = ax.get_legend_handles_labels()
    if top is not None:
        values = [v for _, v in (*train, *valid, *full)]
        low = min(values)
        ax.set_ylim(low - (top - low) * 0.04, top)
        above = sum(v > top for v in values)
        handles.append(
            Line2D(
                [],
                [],
                color=GREY,
                linestyle="none",
                marker=r"$\uparrow$",
                markersize=10,
                label=f"{above} value{'s' if above != 1 else ''} above the chart"
                f" (up to {max(values):.2f}; left out of the average)",
            )
        )
    ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.9)

    heading = title or ("Loss of " + job_id if job_id else "Training and validation loss")
    parts = [model] if model else []
    parts.append(f"{last:,} step{'s' if last != 1 else ''}")
    if tail is not None and not math.isnan(tail):
        smoothed_note = " (smoothed)" if smoothing_window(len(train)) > 1 else ""
        parts.append(f"last training loss {tail:.3f}{smoothed_note}")
    last_valid = (full or valid)[-1] if (full or valid) else None
    if last_valid:
        parts.append(f"last validation loss {last_valid[1]:.3f} (step {last_valid[0]:,})")
    _titles(fig, ax, heading, parts)
    return fig


def _epochs(ax, ends: list[int], first: int, last: int) -> None:
    if not ends:
        return
    for i, end in enumerate(ends):
        ax.axvline(
            end + 0.5 if last - first < 200 else end,  # between the epoch's last step and the next
            color="0.55",
            linestyle=":",
            linewidth=1.2,
            label="end of an epoch" if i == 0 else None,
            zorder=1,
        )
    if len(ends) + 1 > 12:
        return
    bounds = [first - 0.5, *[e + 0.5 for e in ends], last + 0.5]
    top = ax.secondary_xaxis("top")
    top.set_xticks(
        [(a + b) / 2 for a, b in itertools.pairwise(bounds)],
        [f"epoch {k}" for k in range(1, len(bounds))],
    )
    top.tick_params(length=0, labelsize=8, labelcolor=GREY)
    top.spines["top"].set_visible(False)


def _nice(width: float) -> int:
    """The 1, 2, 2.5, 5 x 10^k integer at or above `width`."""
    if width <= 1:
        return 1
    power = 10 ** math.floor(math.log10(width))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= width and (step * power) % 1 == 0:
            return int(step * power)
    return int(10 * power)


def tokens_figure(
    data: DatasetReport | Mapping[int, int] | Iterable[int],
    *,
    limit: int | None = None,
    title: str | None = None,
    label: str | None = None,
) -> Figure:
    """A histogram of tokens per example with the context limit as a red dashed line.

    `data` is a `DatasetReport` (its histogram, limit, model and file name are used), a mapping
    {tokens: examples} or the token counts themselves (a list or a numpy array). Examples over
    the limit are drawn red and counted in the legend; a limit far beyond the longest example
    is named at the right edge instead of squeezing every bar into one.
    """
    import numpy as np

    subtitle: list[str] = []
    heading = title
    if hasattr(data, "histogram") and hasattr(data, "context_limit"):
        report = data
        counts = {int(k): int(v) for k, v in report.histogram.items()}
        limit = report.context_limit if limit is None else limit
        heading = heading or f"Tokens per example: {Path(report.path).name}"
        tokenizer = f" ({report.tokenizer})" if report.tokenizer else ""
        subtitle.append(f"{report.format or 'dataset'}, counted for {report.model}{tokenizer}")
    elif isinstance(data, Mapping):
        counts = {int(k): int(v) for k, v in data.items()}
    else:
        array = np.asarray(data if hasattr(data, "shape") else list(data), dtype=np.int64)
        values, number = np.unique(array, return_counts=True)
        counts = dict(zip(values.tolist(), number.tolist(), strict=True))
    counts = {t: n for t, n in counts.items() if n > 0}
    if not counts:
        raise NoMetrics("no token counts to plot (no valid example)")
    tokens = np.array(sorted(counts), dtype=np.int64)
    weights = np.array([counts[t] for t in tokens], dtype=np.int64)
    total = int(weights.sum())
    longest = int(tokens[-1])
    mean = float((tokens * weights).sum() / total)
    p90 = int(tokens[np.searchsorted(np.cumsum(weights), max(1, -(-9 * total // 10)))])
    subtitle += [
        f"{total:,} example{'s' if total != 1 else ''}",
        f"mean {mean:,.0f}",
        f"p90 {p90:,}",
        f"longest {longest:,} tokens",
    ]

    # A long thin tail would squeeze the bulk into a few bars: the chart stops after 99.5% of
    # the examples (the rest are counted in a note), unless the limit lies further right.
    cumulative = np.cumsum(weights)
    p995 = int(tokens[np.searchsorted(cumulative, max(1, math.ceil(0.995 * total)))])
    right = longest if longest <= 1.5 * p995 else int(p995 * 1.2)
    shown_limit = limit is not None and (limit <= longest or limit <= right * 1.6)
    if shown_limit and limit is not None:
        right = max(right, int(limit * 1.1))
    width = _nice(max(right, 1) / min(40, max(10, 2 * math.isqrt(total))))
    start = -0.5
    if shown_limit and limit is not None:  # bars end exactly at the limit: none straddles it
        start = (limit + 0.5) % width - width
    edges = np.arange(start, right + width + 1, width)
    inside = tokens <= limit if limit is not None else np.ones(len(tokens), dtype=bool)
    fits, _ = np.histogram(tokens[inside], bins=edges, weights=weights[inside])
    over, _ = np.histogram(tokens[~inside], bins=edges, weights=weights[~inside])
    n_over = int(weights[~inside].sum())

    fig = _figure()
    ax = fig.add_subplot()
    _style(ax)
    thin = 0.5 if len(edges) < 80 else 0
    name = label or "examples"
    bars = ax.bar(
        edges[:-1],
        fits,
        width=width,
        align="edge",
        color=TRAIN,
        edgecolor="white",
        linewidth=thin,
        label=f"{name} within the limit: {total - n_over:,}"
        if limit is not None
        else f"{name}: {total:,}",
    )
    handles = [bars]
    if n_over:
        share = n_over / total
        handles.append(
            ax.bar(
                edges[:-1],
                over,
                width=width,
                align="edge",
                bottom=fits,
                color=LIMIT,
                edgecolor="white",
                linewidth=thin,
                label=f"over the limit: {n_over:,} ({'<0.1%' if share < 0.001 else f'{share:.1%}'}),"
                " truncated or dropped",
            )
        )
        # a few long examples make bars too low to see: then a tick on the axis for each length
        long = tokens[~inside]
        long = long[long <= edges[-1]]
        if over.max() < 0.03 * (fits + over).max():
            ax.plot(
                long,
                np.zeros(len(long)),
                linestyle="none",
                marker="|",
                markersize=9,
                markeredgewidth=1.2,
                color=LIMIT,
                clip_on=False,
                zorder=6,
            )
    from matplotlib.lines import Line2D

    if limit is not None and shown_limit:
        line = ax.axvline(
            limit,
            color=LIMIT,
            linestyle="--",
            linewidth=1.8,
            label=f"context limit: {limit:,} tokens",
            zorder=5,
        )
        handles.append(line)
    elif limit is not None:
        handles.append(
            Line2D(
                [],
                [],
                color=LIMIT,
                linestyle="--",
                linewidth=1.8,
                label=f"context limit: {limit:,} tokens (far to the right; every example fits)",
            )
        )
    beyond = int(weights[tokens > edges[-1]].sum())
    if beyond:
        handles.append(
            Line2D(
                [],
                [],
                color=GREY,
                linestyle="none",
                marker=r"$\rightarrow$",
                markersize=11,
                label=f"{beyond:,} longer example{'s' if beyond != 1 else ''} off the chart"
                f" (up to {longest:,} tokens)",
            )
        )
    ax.set_xlim(max(edges[0], -0.5), edges[-1] + width * 0.5)
    ax.set_ylim(0, max(1, int((fits + over).max())) * 1.3)  # room for the legend
    _thousands(ax.xaxis)
    _thousands(ax.yaxis)
    ax.set_xlabel(f"tokens per example (bars {width:,} token{'s' if width != 1 else ''} wide)")
    ax.set_ylabel("examples")
    ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.9)
    _titles(fig, ax, heading or "Tokens per example", subtitle)
    return fig


# -- writing -------------------------------------------------------------------------------------


def png_target(path: str | Path, *, force: bool = False) -> Path:
    """Where a picture may go: a `.png` name, in a folder that exists (a typo in `-o` is not
    a new folder), not over an existing file unless `force`. Checked before any work."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConvtuneError("a picture is written as PNG: give a name ending in .png", path=path)
    if not path.parent.is_dir():
        raise ConvtuneError("no such folder", path=path.parent, hint="create it first")
    if path.exists() and not force:
        raise OutputExistsError("already exists", path=path, hint="use --force to overwrite it")
    return path


def save_png(figure: Figure, path: str | Path, *, force: bool = False) -> Path:
    """Write `figure` as a PNG, atomically (a temporary file renamed into place).

    An existing file is an `OutputExistsError` unless `force`.
    """
    path = png_target(path, force=force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            figure.savefig(f, format="png", dpi=DPI, facecolor="white")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
