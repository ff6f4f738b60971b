"""`hmk8s.evaluate.stats` against rliable (the reference implementation of the protocol) on the
same per-seed scores.

Point estimates must agree to float rounding. Confidence bounds come from two independent
Monte-Carlo bootstraps (different random draws), so they can only agree to the Monte-Carlo
error of a percentile of ``R`` draws: the empirical p-quantile sits at the true quantile
level ``p + e`` with ``e`` about normal with standard deviation ``sqrt(p (1 - p) / R)``
(order-statistic theory, any distribution). At ``Z = 4`` standard deviations both estimates
lie, except with probability below 1e-4 each, between the bootstrap distribution's quantiles
at levels ``p -+ Z sqrt(p (1 - p) / R)``; the tolerance is the width of that band, read
from the project's own draws.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hmk8s.evaluate import stats

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # arch's and seaborn's import-time deprecation notices
    from rliable import library as rly
    from rliable import metrics as rlm

REPS = 2000
CONFIDENCE = 0.95
Z = 4.0


def _scores() -> tuple[np.ndarray, np.ndarray]:
    """Two algorithms, 10 seeds x 3 use cases, returns on the scale of the evaluation's (each use
    case its own level and spread), a few collapsed seeds (the skew the IQM is for) and ties at
    one decimal."""
    rng = np.random.default_rng(7)
    level, spread = np.array([98.0, 92.0, 84.0]), np.array([1.5, 5.0, 6.0])
    x = level + spread * rng.normal(size=(10, 3)) - 30.0 * (rng.random((10, 3)) < 0.1)
    y = level - 3.0 + spread * rng.normal(size=(10, 3))
    return np.round(x, 1), np.round(y, 1)


def _tolerance(draws: np.ndarray, level: float, reps: int) -> float:
    """Width of the band of quantiles of ``draws`` that a ``reps``-draw estimate of the
    ``level`` quantile stays in with probability 1 - 1e-4 (module docstring)."""
    spread = Z * np.sqrt(level * (1.0 - level) / reps)
    low, high = np.quantile(draws, [max(level - spread, 0.0), min(level + spread, 1.0)])
    return float(high - low) + 1e-9


def _rliable_interval(
    samples: list[np.ndarray], statistic, reps: int
) -> tuple[float, float, float]:
    """rliable's point estimate and percentile CI; one sample uses its StratifiedBootstrap,
    several its StratifiedIndependentBootstrap (as it compares algorithms)."""
    np.random.seed(11)  # rliable draws its resamples from numpy's global generator
    data = samples[0] if len(samples) == 1 else samples
    points, intervals = rly.get_interval_estimates(
        {"a": data},
        lambda *s: np.array([statistic(*s)]),
        reps=reps,
        confidence_interval_size=CONFIDENCE,
    )
    return float(points["a"][0]), float(intervals["a"][0, 0]), float(intervals["a"][1, 0])


def _assert_agree(ours: stats.Interval, draws: np.ndarray, theirs: tuple, reps: int) -> None:
    value, low, high = theirs
    assert ours.value == pytest.approx(value, rel=1e-12, abs=1e-12)
    tail = (1.0 - CONFIDENCE) / 2.0
    assert abs(ours.low - low) <= _tolerance(draws, tail, reps)
    assert abs(ours.high - high) <= _tolerance(draws, 1.0 - tail, reps)


def test_iqm_and_its_ci_agree_with_rliable():
    x, _ = _scores()
    assert stats.iqm(x) == pytest.approx(rlm.aggregate_iqm(x), rel=1e-12)
    assert stats.iqm(x[:, 1]) == pytest.approx(rlm.aggregate_iqm(x[:, 1:2]), rel=1e-12)
    ours = stats.bootstrap_ci(x, reps=REPS, confidence=CONFIDENCE)
    draws = stats.bootstrap_draws(stats.iqm, [x], REPS)
    _assert_agree(ours, draws, _rliable_interval([x], rlm.aggregate_iqm, REPS), REPS)


def _rliable_difference(a: np.ndarray, b: np.ndarray) -> float:
    return rlm.aggregate_iqm(a) - rlm.aggregate_iqm(b)


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return stats.iqm(a) - stats.iqm(b)


@pytest.mark.parametrize("against_baseline", [False, True])
def test_iqm_difference_ci_agrees_with_rliable(against_baseline: bool):
    # seeds against seeds (HAQL vs DQN), and seeds against a baseline's single value on one
    # use case (the agents vs `hpa`), as hmk8s.evaluate.experiment compares them
    x, y = _scores()
    if against_baseline:
        x, y = x[:, :1], np.array([[95.6]])
    ours = stats.difference_ci(x, y, reps=REPS, confidence=CONFIDENCE)
    draws = stats.bootstrap_draws(_difference, [x, y], REPS)
    _assert_agree(ours, draws, _rliable_interval([x, y], _rliable_difference, REPS), REPS)


def test_probability_of_improvement_and_its_ci_agree_with_rliable():
    x, y = _scores()
    x, y = x[:, :2], y[:, :2]
    y[3, 0] = x[5, 0]  # a tie, which both count as one half
    assert stats.probability_of_improvement(x, y) == pytest.approx(
        rlm.probability_of_improvement(x, y), rel=1e-12
    )
    reps = 1000  # rliable's Mann-Whitney per resample is slow; the tolerance follows reps
    ours = stats.probability_of_improvement_ci(x, y, reps=reps, confidence=CONFIDENCE)
    draws = stats.bootstrap_draws(stats.probability_of_improvement, [x, y], reps)
    theirs = _rliable_interval([x, y], rlm.probability_of_improvement, reps)
    _assert_agree(ours, draws, theirs, reps)


def test_the_tolerance_is_tight_enough_to_catch_an_unstratified_bootstrap():
    # resampling the pooled 30 scores (ignoring the use cases, whose levels differ) widens the
    # IQM's CI by about 2 at each end; the tolerance must be small enough that this wrong
    # bootstrap fails the comparison
    x, _ = _scores()
    rng = np.random.default_rng(0)
    pooled = np.array(
        [stats.iqm(rng.choice(x.reshape(-1), size=x.size, replace=True)) for _ in range(REPS)]
    )
    draws = stats.bootstrap_draws(stats.iqm, [x], REPS)
    _, low, high = _rliable_interval([x], rlm.aggregate_iqm, REPS)
    wrong_low, wrong_high = np.percentile(pooled, [2.5, 97.5])
    tail = (1.0 - CONFIDENCE) / 2.0
    assert abs(wrong_low - low) > _tolerance(draws, tail, REPS) or abs(
        wrong_high - high
    ) > _tolerance(draws, 1.0 - tail, REPS)
