"""The statistics of `hmk8s.evaluate.stats` and `hmk8s.evaluate.learning` on small fixed samples
whose answers are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from hmk8s.evaluate import learning, stats


def test_iqm_drops_a_quarter_at_each_end():
    # n = 10: cut floor(10/4) = 2 each side -> mean(3..8) = 33 / 6 = 5.5
    assert stats.iqm(np.arange(1, 11)) == pytest.approx(5.5)
    # n = 8, sorted 0 1 2 3 4 5 10 100: cut 2 each side -> mean(2, 3, 4, 5) = 3.5
    assert stats.iqm([10, 0, 3, 1, 2, 100, 4, 5]) == pytest.approx(3.5)
    # n = 3: cut floor(0.75) = 0 -> the mean, (1 + 2 + 6) / 3 = 3
    assert stats.iqm([1, 2, 6]) == pytest.approx(3.0)
    # a [runs, tasks] matrix pools every score: 1..8 -> cut 2 -> mean(3, 4, 5, 6) = 4.5
    assert stats.iqm([[1, 5], [2, 6], [3, 7], [4, 8]]) == pytest.approx(4.5)


def test_bootstrap_ci_of_two_runs():
    # runs {0, 1} (IQM of 2 = mean): a resample's mean is 0, 0.5 or 1 with probability
    # 1/4, 1/2, 1/4; the 2.5th and 97.5th percentiles of that are 0 and 1.
    ci = stats.bootstrap_ci([0.0, 1.0], reps=2000, seed=3)
    assert ci == (0.5, 0.0, 1.0)


def test_bootstrap_ci_of_identical_runs_is_a_point():
    assert stats.bootstrap_ci([2.0, 2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_stratified_bootstrap_resamples_within_each_task():
    # task 0 has runs {0, 1}, task 1 has runs {100, 101}. The pooled mean of a stratified
    # resample is 50 + (a + b) / 4 with a, b ~ Binomial(2, 1/2) independent, so a + b ~
    # Binomial(4, 1/2): 50 with probability 1/16 = 6.25 % and 51 with 1/16, hence the 95 % CI
    # (50, 51) around 50.5. Resampling the pooled four scores instead could give 0 or 101.
    scores = np.array([[0.0, 100.0], [1.0, 101.0]])
    ci = stats.bootstrap_ci(scores, aggregate=np.mean, reps=2000, seed=0)
    assert ci == (50.5, 50.0, 51.0)
    rng = np.random.default_rng(0)
    draws = np.stack([stats.stratified_resample(scores, rng) for _ in range(400)])
    assert set(np.unique(draws[:, :, 0])) == {0.0, 1.0}
    assert set(np.unique(draws[:, :, 1])) == {100.0, 101.0}
    # columns are drawn independently: task 0 all 0 with task 1 all 101 (probability 1/16)
    # happens, which resampling whole rows [0, 100] / [1, 101] never produces.
    mixed = (draws[:, :, 0] == 0.0).all(axis=1) & (draws[:, :, 1] == 101.0).all(axis=1)
    assert mixed.any()


def test_probability_of_improvement_counts_wins_and_half_ties():
    # x = 1 beats only 0 (1 win); x = 2 ties 2 twice, beats 0 (1 win, 2 ties); x = 3 beats all
    # (3 wins): (5 + 2 / 2) / 9 = 2 / 3.
    assert stats.probability_of_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(2 / 3)
    # two tasks average: task 0 gives 1 (x always wins), task 1 gives 0 -> 0.5
    assert stats.probability_of_improvement([[5, 0], [6, 1]], [[1, 7], [2, 8]]) == 0.5


def test_compare_separated_samples_is_significant():
    # x IQM = mean(11, 12) = 11.5, y IQM = mean(1, 2) = 1.5: difference 10; every resampled
    # difference lies in [10 - 3, 13 - 0] > 0, and every x beats every y: P = 1, CI (1, 1).
    result = stats.compare([10, 11, 12, 13], [0, 1, 2, 3])
    assert result.difference.value == pytest.approx(10.0)
    assert result.difference.low >= 7.0
    assert result.difference.high <= 13.0
    assert result.improvement == (1.0, 1.0, 1.0)
    assert result.significant


def test_compare_overlapping_samples_is_not_significant():
    # x in {0, 1} against y = 0: the difference is 0, 0.5 or 1 (CI (0, 1)), which includes 0.
    result = stats.compare([0.0, 1.0], [0.0, 0.0])
    assert result.difference == (0.5, 0.0, 1.0)
    # x = 0 ties both y (2 half-wins), x = 1 beats both (2 wins): (2 + 1) / 4 = 0.75
    assert result.improvement.value == pytest.approx(0.75)
    assert not result.significant


def test_time_to_threshold_interpolates_the_first_crossing():
    steps = np.array([0, 10, 20, 30])
    # 6 lies between 4 (step 10) and 8 (step 20): 10 + (6 - 4) / (8 - 4) * 10 = 15
    assert learning.time_to_threshold(steps, np.array([0, 4, 8, 12]), 6.0) == pytest.approx(15.0)
    # the first crossing counts, not a later one: 0 -> 10 crosses 5 at step 5
    assert learning.time_to_threshold(steps, np.array([0, 10, 2, 12]), 5.0) == pytest.approx(5.0)
    assert learning.time_to_threshold(steps, np.array([7, 8, 9, 9]), 6.0) == 0.0
    assert learning.time_to_threshold(steps, np.array([0, 4, 8, 12]), 13.0) == np.inf


def test_times_to_threshold_censors_at_the_budget():
    steps = np.array([0, 10, 20])
    curves = np.array([[0, 10, 10], [0, 0, 1]])
    # seed 0 crosses 5 at step 5; seed 1 never reaches it: censored at the last step, 20
    times, censored = learning.times_to_threshold(steps, curves, 5.0)
    np.testing.assert_allclose(times, [5.0, 20.0])
    np.testing.assert_array_equal(censored, [False, True])


def test_normalised_auc():
    # normalised [0, 1, 1] on steps [0, 10, 20]: (0 + 1) / 2 * 10 + (1 + 1) / 2 * 10 = 15 over 20
    assert learning.normalised_auc([0, 10, 20], [0, 10, 10], low=0.0, high=10.0) == 0.75
    # with low = -10, high = 10: [0.5, 1, 1] -> (7.5 + 10) / 20 = 0.875
    assert learning.normalised_auc([0, 10, 20], [0, 10, 10], low=-10.0, high=10.0) == 0.875


def test_return_at_interpolates():
    assert learning.return_at([0, 10, 20], [0, 100, 50], 2.5) == pytest.approx(25.0)
    assert learning.return_at([0, 10, 20], [0, 100, 50], 15.0) == pytest.approx(75.0)


def test_curve_band_is_the_iqm_per_point():
    # column 0: 1 2 3 4 -> IQM mean(2, 3) = 2.5; column 1 constant 7 -> band (7, 7, 7)
    curves = np.array([[1, 7], [2, 7], [3, 7], [4, 7]], dtype=float)
    mid, low, high = learning.curve_band(curves, reps=500)
    np.testing.assert_allclose(mid, [2.5, 7.0])
    assert 1.0 <= low[0] <= 2.5 <= high[0] <= 4.0
    assert (low[1], high[1]) == (7.0, 7.0)
