"""Learning-speed metrics on per-seed learning curves (greedy return against env steps).

A curve is ``returns[T]`` measured at ``steps[T]`` env steps (increasing). The metrics compare
how fast two learners get good, not only where they end: the env steps to reach a threshold, the
normalised area under the curve, and the return at fixed budgets.
"""

from __future__ import annotations

import numpy as np

from hmk8s.evaluate.stats import bootstrap_ci


def time_to_threshold(steps: np.ndarray, returns: np.ndarray, threshold: float) -> float:
    """Env steps at which the curve first reaches ``threshold``, interpolated linearly between
    the last point below and the first point at or above it; ``inf`` if it never does."""
    steps, returns = np.asarray(steps, np.float64), np.asarray(returns, np.float64)
    above = np.flatnonzero(returns >= threshold)
    if above.size == 0:
        return float("inf")
    i = int(above[0])
    if i == 0:
        return float(steps[0])
    x0, x1, y0, y1 = steps[i - 1], steps[i], returns[i - 1], returns[i]
    return float(x0 + (threshold - y0) / (y1 - y0) * (x1 - x0))


def times_to_threshold(
    steps: np.ndarray, curves: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per seed (rows of ``curves``): the time to threshold, censored at the last step when the
    seed never reaches it (a lower bound), and which seeds were censored."""
    times = np.array([time_to_threshold(steps, c, threshold) for c in np.asarray(curves)])
    censored = ~np.isfinite(times)
    return np.where(censored, float(np.asarray(steps)[-1]), times), censored


def normalised_auc(steps: np.ndarray, returns: np.ndarray, low: float, high: float) -> float:
    """Mean over the run of the normalised return ``(R - low) / (high - low)`` (trapezoids over
    env steps): 1 means the ``high`` level from the first step on, 0 the ``low`` level."""
    steps, returns = np.asarray(steps, np.float64), np.asarray(returns, np.float64)
    norm = (returns - low) / (high - low)
    area = np.sum((norm[1:] + norm[:-1]) / 2.0 * np.diff(steps))
    return float(area / (steps[-1] - steps[0]))


def return_at(steps: np.ndarray, returns: np.ndarray, budget: float) -> float:
    """The curve's return at ``budget`` env steps, interpolated linearly between points."""
    return float(np.interp(budget, np.asarray(steps, np.float64), np.asarray(returns, np.float64)))


def curve_band(
    curves: np.ndarray, reps: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over seeds at each point of ``curves[seeds, T]`` and its bootstrap CI: the line and
    band of a learning-curve plot."""
    points = [bootstrap_ci(col, reps=reps, confidence=confidence, seed=seed) for col in curves.T]
    return tuple(np.array([getattr(p, f) for p in points]) for f in ("value", "low", "high"))
