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


def new_figure() -> Figure:
    return _figure_class()(figsize=SIZE, dpi=DPI, layout="constrained")


def style(ax) -> None:
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def thousands(axis) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def titles(fig, ax, title: str, parts: list[str]) -> None:
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
    as points, epoch boundaries as dotted lines; steps on x, loss in nats per token on y. A DPO
    job's figure has a second panel: its reward margin and reward accuracy (`_reward_panel`)."""
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
    fig = new_figure()
    rewarded = any("train_reward_margin" in r or "valid_reward_margin" in r for r in rows)
    if rewarded:
        fig.set_size_inches(SIZE[0], SIZE[1] * 1.7)
    ax = fig.add_subplot(2, 1, 1) if rewarded else fig.add_subplot()
    style(ax)
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
    thousands(ax.xaxis)
    ax.set_xlabel("training step (one optimizer update per batch)")
    ax.set_ylabel(
        "DPO loss (-log sigmoid of the margin, per pair)"
        if rewarded
        else "loss (cross-entropy, nats per token)"
    )
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
    titles(fig, ax, heading, parts)
    if rewarded:
        _reward_panel(fig.add_subplot(2, 1, 2, sharex=ax), rows, ends, first, last)
    return fig


def _reward_panel(ax, rows: list[dict[str, Any]], ends: list[int], first: int, last: int) -> None:
    """DPO's measures per step: the reward margin (beta x how much more the fine-tune prefers
    the preferred reply than the reference did; above 0 is learning) on the left axis, the
    share of pairs with a positive margin (reward accuracy) on the right."""
    style(ax)
    for key, colour, label, marker in (
        ("train_reward_margin", TRAIN, "training reward margin (each step)", None),
        ("valid_reward_margin", VALID, "validation reward margin", "o"),
    ):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, color=colour, marker=marker, linewidth=1.4, label=label)
    ax.axhline(0, color=GREY, linewidth=0.8)
    ax.set_ylabel("reward margin (nats x beta)")
    ax.set_xlabel("training step (one optimizer update per batch)")
    _epochs(ax, [e for e in ends if first <= e < last], first, last)
    share = ax.twinx()
    for key, colour, label in (
        ("train_reward_accuracy", TRAIN, "training reward accuracy"),
        ("valid_reward_accuracy", VALID, "validation reward accuracy"),
    ):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            share.plot(steps, values, color=colour, linestyle=":", linewidth=1.2, label=label)
    share.set_ylim(-0.02, 1.02)
    share.set_ylabel("reward accuracy (share of pairs)")
    handles = ax.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)
    ax.set_title("Preference (DPO): reward margin and accuracy", fontsize=10, loc="left")


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
