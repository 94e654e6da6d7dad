"""The picture of a dataset's lengths: each example's tokens against the limit, from a
`check_file` report (`convtune check --plot`, the notebook). Drawn as `charts.loss_figure` is,
without pyplot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .charts import GREY, LIMIT, TRAIN, new_figure, style, thousands, titles
from .job_metrics import NoMetrics

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with convtune
    from matplotlib.figure import Figure

    from ..dataset.report import DatasetReport


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

    fig = new_figure()
    ax = fig.add_subplot()
    style(ax)
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
    thousands(ax.xaxis)
    thousands(ax.yaxis)
    ax.set_xlabel(f"tokens per example (bars {width:,} token{'s' if width != 1 else ''} wide)")
    ax.set_ylabel("examples")
    ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.9)
    titles(fig, ax, heading or "Tokens per example", subtitle)
    return fig
