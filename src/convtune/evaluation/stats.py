"""How sure a mean score is: percentile-bootstrap intervals, paired differences, percentiles.

A validation file holds tens to hundreds of examples, so a mean score alone says little: one
model's 0.41 against another's 0.39 may be noise. `mean_interval` resamples the examples with
replacement (`resamples` times, numpy's `default_rng(seed)`: the same numbers for the same seed)
and takes the middle `level` of the resampled means. `paired_difference` does the same for the
per-example differences of two models on the same examples, which is far tighter than comparing
two separate intervals, since the examples' own difficulty cancels out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
_CHUNK = 1 << 20  # resampled indices drawn at a time: 8 MB, whatever the number of examples


@dataclass(frozen=True)
class Interval:
    """A mean and the bounds of its confidence interval (`low` <= `high`)."""

    mean: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def mean_interval(
    values: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> Interval:
    """The mean of `values` and its percentile-bootstrap interval at `level`.

    Deterministic for a seed. One value gives a zero-width interval at it; no value, a non-finite
    value, `resamples` < 1 or `level` outside (0, 1) is a `ValueError`.
    """
    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0:
        raise ValueError("a mean interval needs at least one value, and there are none")
    if not np.all(np.isfinite(data)):
        raise ValueError("a mean interval needs finite values (found NaN or infinity)")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (exclusive), not {level}")
    mean = float(data.mean())
    if data.size == 1 or np.all(data == data[0]):
        return Interval(mean, mean, mean)  # every resample is the same: no width, no rounding
    rng = np.random.default_rng(seed)
    n = data.size
    rows = max(1, _CHUNK // n)
    means = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = data[indices].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean, float(low), float(high))


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> Interval:
    """The mean of ``b - a`` over paired examples, and its bootstrap interval.

    `a[i]` and `b[i]` are two models' scores on the same example i: resampling the differences
    resamples the examples jointly. Positive means b scores higher. Lengths must match.
    """
    first = np.asarray(a, dtype=float).ravel()
    second = np.asarray(b, dtype=float).ravel()
    if first.size != second.size:
        raise ValueError(f"paired scores need equal lengths, not {first.size} and {second.size}")
    return mean_interval(second - first, seed=seed, resamples=resamples, level=level)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, numpy's linear method; no value: `ValueError`."""
    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0:
        raise ValueError("a percentile needs at least one value, and there are none")
    return float(np.percentile(data, q, method="linear"))
