"""Aggregate scores over seeds the rliable way: interquartile mean, stratified bootstrap CIs.

A score matrix is ``[runs, tasks]``: one row per seed, one column per task (a use case, or a
single column for one use case). Few seeds make the mean fragile and the median noisy; the
interquartile mean (IQM) keeps the middle half of all scores. Confidence intervals come from a
percentile bootstrap that resamples runs *within* each task (stratified), so every resample keeps
every task. Two algorithms differ significantly when the 95 % CI of their IQM difference excludes
zero; the probability of improvement (how often a run of X beats a run of Y) is reported beside it.
`tests/test_stats_rliable.py` checks every estimate here against rliable on the same scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

Aggregate = Callable[[np.ndarray], float]


def as_matrix(scores: np.ndarray | list[float]) -> np.ndarray:
    """Scores as a float ``[runs, tasks]`` matrix; a vector is one task."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected scores of shape [runs] or [runs, tasks], got {arr.shape}")
    return arr


def iqm(scores: np.ndarray | list[float]) -> float:
    """Interquartile mean of all scores: drop the lowest and highest ``floor(n / 4)``, average
    the rest (``scipy.stats.trim_mean(x, 0.25)``, which rliable uses)."""
    flat = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    cut = int(0.25 * flat.size)
    return float(flat[cut : flat.size - cut].mean())


def stratified_resample(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap resample: for each task independently, draw its runs with replacement."""
    runs, tasks = scores.shape
    rows = rng.integers(0, runs, size=(runs, tasks))
    return np.take_along_axis(scores, rows, axis=0)


class Interval(NamedTuple):
    """A point estimate and its two-sided confidence interval."""

    value: float
    low: float
    high: float


def bootstrap_draws(
    statistic: Callable[..., float],
    samples: Sequence[np.ndarray | list[float]],
    reps: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """``statistic(*resamples)`` over ``reps`` bootstrap resamples, each sample resampled
    independently and stratified by task (independent seeds of different algorithms)."""
    mats = [as_matrix(s) for s in samples]
    rng = np.random.default_rng(seed)
    return np.array([statistic(*(stratified_resample(m, rng) for m in mats)) for _ in range(reps)])


def percentile_interval(point: float, draws: np.ndarray, confidence: float) -> Interval:
    """``point`` with the central ``confidence`` percentile interval of ``draws`` (linear
    interpolation between order statistics, as ``np.percentile``)."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return Interval(float(point), float(low), float(high))


def bootstrap_ci(
    scores: np.ndarray | list[float],
    aggregate: Aggregate = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``aggregate(scores)`` with its percentile CI over ``reps`` stratified resamples."""
    draws = bootstrap_draws(aggregate, [scores], reps, seed)
    return percentile_interval(aggregate(as_matrix(scores)), draws, confidence)


def difference_ci(
    x: np.ndarray | list[float],
    y: np.ndarray | list[float],
    aggregate: Aggregate = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``aggregate(x) - aggregate(y)`` with a CI; the runs of x and y are resampled
    independently (they are independent seeds), each stratified by task."""

    def difference(mx: np.ndarray, my: np.ndarray) -> float:
        return aggregate(mx) - aggregate(my)

    draws = bootstrap_draws(difference, [x, y], reps, seed)
    return percentile_interval(difference(as_matrix(x), as_matrix(y)), draws, confidence)


def probability_of_improvement(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """P(X > Y): the chance a random run of x beats a random run of y on the same task (ties
    count one half), averaged over tasks; the Mann-Whitney U statistic over ``m * n``."""
    mx, my = as_matrix(x), as_matrix(y)
    if mx.shape[1] != my.shape[1]:
        raise ValueError("x and y must have the same tasks")
    wins = (mx[:, None, :] > my[None, :, :]).mean(axis=(0, 1))
    ties = (mx[:, None, :] == my[None, :, :]).mean(axis=(0, 1))
    return float((wins + 0.5 * ties).mean())


def probability_of_improvement_ci(
    x: np.ndarray | list[float],
    y: np.ndarray | list[float],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """`probability_of_improvement` with its stratified bootstrap CI."""
    draws = bootstrap_draws(probability_of_improvement, [x, y], reps, seed)
    return percentile_interval(probability_of_improvement(x, y), draws, confidence)


class Comparison(NamedTuple):
    """X against Y: IQM difference and P(X > Y), each with its CI, and the verdict."""

    difference: Interval
    improvement: Interval
    significant: bool


def compare(
    x: np.ndarray | list[float],
    y: np.ndarray | list[float],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare two algorithms' scores; significant when the IQM-difference CI excludes 0."""
    diff = difference_ci(x, y, iqm, reps, confidence, seed)
    poi = probability_of_improvement_ci(x, y, reps, confidence, seed)
    return Comparison(diff, poi, bool(diff.low > 0.0 or diff.high < 0.0))
