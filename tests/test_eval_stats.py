"""Bootstrap intervals: deterministic for a seed, around the mean, narrower with more examples."""

from __future__ import annotations

import numpy as np
import pytest

from convtune.evaluation.stats import Interval, mean_interval, paired_difference, percentile


def scores(n: int, seed: int = 1) -> list[float]:
    return list(np.random.default_rng(seed).uniform(0, 1, size=n))


def test_same_seed_same_interval_other_seed_other_interval():
    values = scores(40)
    assert mean_interval(values, seed=3) == mean_interval(values, seed=3)
    assert mean_interval(values, seed=3) != mean_interval(values, seed=4)


def test_interval_contains_the_mean_and_has_the_expected_width():
    values = [0.0, 1.0] * 50  # mean 0.5, standard error 0.05: about 0.4 .. 0.6 at 95 %
    interval = mean_interval(values)
    assert interval.mean == 0.5
    assert 0.38 < interval.low < 0.45 and 0.55 < interval.high < 0.62
    for n in (2, 5, 30):
        got = mean_interval(scores(n))
        assert got.low <= got.mean <= got.high


def test_interval_narrows_as_examples_grow():
    widths = [(lambda i: i.high - i.low)(mean_interval(scores(n))) for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2] > 0


def test_level_widens_the_interval():
    values = scores(50)
    narrow, wide = mean_interval(values, level=0.5), mean_interval(values, level=0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


def test_one_value_no_value_bad_values():
    assert mean_interval([0.7]) == Interval(0.7, 0.7, 0.7)
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([0.5, float("nan")])
    with pytest.raises(ValueError, match="level"):
        mean_interval([0.1, 0.2], level=1.0)


def test_paired_difference_of_identical_scores_is_exactly_zero():
    values = scores(25)
    assert paired_difference(values, values) == Interval(0.0, 0.0, 0.0)


def test_paired_difference_sees_what_separate_intervals_miss():
    # Hard and easy examples vary a lot; b is a little better on every one of them.
    a = scores(30)
    b = [x + 0.03 for x in a]
    difference = paired_difference(a, b, seed=7)
    assert difference.mean == pytest.approx(0.03)
    assert difference.low > 0  # reliably better, although the two intervals overlap:
    first, second = mean_interval(a), mean_interval(b)
    assert second.low < first.high
    assert paired_difference(b, a).mean == pytest.approx(-0.03)  # the sign is b - a
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([0.1, 0.2], [0.1])


def test_percentiles_are_numpys_linear_ones():
    latencies = [1.0, 2.0, 3.0, 4.0]
    assert percentile(latencies, 50) == 2.5
    assert percentile(latencies, 90) == pytest.approx(3.7)  # 1 + 0.9 * (4 - 1)
    assert percentile([0.8], 90) == 0.8
    with pytest.raises(ValueError):
        percentile([], 50)
