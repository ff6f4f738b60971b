"""The verdicts and tables of the results page, from a hand-made result of one use case."""

from __future__ import annotations

import numpy as np

from hmk8s.domain.metrics import POLICY_METRIC_NAMES as METRICS
from hmk8s.evaluate.experiment import select_deployed_xi, targets
from hmk8s.evaluate.report import render_markdown


def point(v: float) -> dict[str, float]:
    return {"value": v, "low": v, "high": v}


def interval(v: float, low: float, high: float) -> dict[str, float]:
    return {"value": v, "low": low, "high": high}


def comparison(diff: float, significant: bool) -> dict:
    return {
        "difference": interval(diff, diff - 1, diff + 1),
        "probability_of_improvement": interval(0.8, 0.6, 0.9),
        "significant": significant,
    }


def policy(ret: float, sla: float, pods: float = 0.0) -> dict[str, dict[str, float]]:
    row = {m: point(0.0) for m in METRICS}
    row["return"], row["sla_violation_rate"] = point(ret), point(sla)
    row["mean_pods"] = point(pods)
    return row


def agent_speed(ttt: float) -> dict:
    return {
        "time_to_threshold": interval(ttt, ttt - 10, ttt + 10),
        "censored_seeds": 1,
        "auc": interval(0.5, 0.4, 0.6),
        "return_at": {"1000": interval(40.0, 30.0, 50.0)},
    }


def make_result(time_ratio: float) -> dict:
    result = {
        "seeds": 5,
        "total_steps": 1000,
        "agent_changes": {"updates_per_step": 0.1},
        "budget_factor": 2.0,
        "updates_per_step": 0.1,
        "updates": {"dqn": 90, "haql": 90},
        "eval_episodes": 8,
        "train_seconds": {"dqn": 10.0, "haql": 12.0},
        "trained_together": False,
        "deployed_xi": {"value": 0.5, "validation_returns": {"0.0": 71.25, "0.5": 80.0}},
        "policies": {
            "dqn": policy(70.0, 0.20),
            # HAQL beats hpa (80 > 75 significantly, 0.10 <= 0.10) but not heuristic (80 < 85)
            # nor the calibrated hpa_exact (80 > 78 but not significantly)
            "haql": policy(80.0, 0.10, 9.0),
            "hpa_exact_calibrated": policy(78.0, 0.10, 12.5),
            "hpa": policy(75.0, 0.10),
            "heuristic": policy(85.0, 0.05),
        },
        "learning_speed": {
            "threshold": 60.0,
            "dqn_final_iqm": 70.0,
            "random_return": -30.0,
            "time_ratio": time_ratio,
            "agents": {"dqn": agent_speed(500.0), "haql": agent_speed(500.0 * time_ratio)},
            "comparisons": {"time_to_threshold": comparison(-200.0, True)},
        },
        "comparisons": {
            "haql_vs_dqn": {"return": comparison(10.0, True)},
            "haql_vs_hpa_exact_calibrated": {"return": comparison(2.0, False)},
            "haql_vs_hpa": {"return": comparison(5.0, True)},
            "haql_vs_heuristic": {"return": comparison(-5.0, True)},
        },
    }
    result["targets"] = targets(result)
    return result


def test_targets_read_the_iqms():
    assert targets(make_result(0.5)) == {
        "haql_half_time": True,
        "haql_beats_hpa_exact_calibrated": False,
        "haql_beats_hpa": True,
        "haql_beats_heuristic": False,
    }
    assert not targets(make_result(0.51))["haql_half_time"]


def test_no_learning_speed_verdict_when_dqn_ends_below_random():
    # DQN's final return -40 is below random's -30: 90 % of the way from -30 to -40 is a
    # threshold every curve passes at once, so no verdict on speed is drawn.
    result = make_result(0.2)
    result["learning_speed"]["dqn_final_iqm"] = -40.0
    result["targets"] = targets(result)
    assert not result["targets"]["haql_half_time"]
    page = render_markdown({"ml": result}, {"command": "c", "device": "d", "wall_seconds": 60})
    assert "learning-speed target **not measurable**" in page
    assert "x DQN's env steps" not in page


def test_page_states_each_target_and_the_numbers():
    meta = {"command": "python scripts/evaluate.py usecase=ml", "device": "cpu", "wall_seconds": 90}
    page = render_markdown({"ml": make_result(0.6)}, meta)
    assert "Wall time: 1.5 min" in page
    assert "5 seeds x 1,000 env steps and 90 updates each (0.1 per env step)" in page
    assert (
        "Training time: DQN 10 s, HAQL 12 s. This use case trains with `agent.updates_per_step=0.1`"
        ", 2 times the budget (`evaluate.budget_by_usecase`)." in page
    )
    together = render_markdown({"ml": {**make_result(0.6), "trained_together": True}}, meta)
    assert "Training time (both agents at once, in two threads): DQN 10 s, HAQL 12 s." in together
    assert "in 0.60 x DQN's env steps: target (at most 0.5) **missed**" in page
    assert (
        "HAQL vs `hpa`: return 80.0 vs 75.0 (significant), SLA violations 0.100 vs 0.100, "
        "mean pods 9.00 vs 0.00: target holds" in page
    )
    assert (
        "HAQL vs `hpa_exact` calibrated: return 80.0 vs 78.0 (not significant), SLA violations "
        "0.100 vs 0.100, mean pods 9.00 vs 12.50: target **missed**" in page
    )
    assert "HAQL vs `heuristic`: return 80.0 vs 85.0" in page
    assert page.count("**missed**") == 3
    # a degenerate interval (a baseline's value) prints as one number, others with their CI
    assert "| HAQL | 80.0 | 0.100 |" in page
    assert "| 300 [290, 310] | 1 | 0.50 [0.40, 0.60] | 40.0 [30.0, 50.0] |" in page
    # for steps to threshold lower is better: P(HAQL better) = 1 - P(HAQL higher) = 1 - 0.8
    assert (
        "| HAQL vs DQN | time_to_threshold | -200.000 [-201.000, -199.000] | 0.20 [0.10, 0.40]"
        in page
    )
    assert "![learning curves](ml_curves.png)" in page
    assert (
        "Trained HAQL acts by argmax [Q + 0.5 eta H], the weight with the best IQM return on "
        "the curve episodes (0.0: 71.2, 0.5: 80.0)." in page
    )


def test_page_states_a_configured_deployed_weight_without_validation():
    result = make_result(0.4)
    result["deployed_xi"] = {"value": 1.0, "validation_returns": {}}
    page = render_markdown({"ml": result}, {"command": "c", "device": "d", "wall_seconds": 60})
    assert "Trained HAQL acts by argmax [Q + 1 eta H].\n" in page


def test_deployed_weight_is_the_one_with_the_best_validation_iqm():
    # returns per seed for each weight; IQM of 4 seeds = mean of the middle two
    returns = {
        0.0: np.array([10.0, 50.0, 60.0, 100.0]),  # IQM 55
        0.5: np.array([0.0, 58.0, 62.0, 62.0]),  # IQM 60
        1.0: np.array([-50.0, 59.0, 61.0, 99.0]),  # IQM 60: a tie, the first one wins
    }
    sla = {xi: np.full(4, 0.1) for xi in returns}
    chosen, scores, rates = select_deployed_xi(lambda xi: (returns[xi], sla[xi]), [0.0, 0.5, 1.0])
    assert chosen == 0.5
    assert scores == {"0.0": 55.0, "0.5": 60.0, "1.0": 60.0}
    assert rates == {"0.0": 0.1, "0.5": 0.1, "1.0": 0.1}


def test_deployed_weight_under_an_sla_limit():
    returns = {0.0: np.full(4, 50.0), 0.5: np.full(4, 70.0), 1.0: np.full(4, 60.0)}
    # IQM of 4 violation rates = mean of the middle two: 0.05, 0.12, 0.08
    sla = {
        0.0: np.array([0.0, 0.04, 0.06, 0.5]),
        0.5: np.array([0.1, 0.11, 0.13, 0.2]),
        1.0: np.array([0.07, 0.08, 0.08, 0.09]),
    }

    def score(xi):
        return returns[xi], sla[xi]

    grid = [0.0, 0.5, 1.0]
    assert select_deployed_xi(score, grid, None)[0] == 0.5  # no limit: the best return
    assert select_deployed_xi(score, grid, 0.1)[0] == 1.0  # 0.5 violates 0.12 > 0.1
    assert select_deployed_xi(score, grid, 0.06)[0] == 0.0  # only 0.0 (0.05) is within
    assert select_deployed_xi(score, grid, 0.01)[0] == 0.5  # none is within: the best return


def test_page_shows_calibrated_beside_default_and_each_scenario():
    result = make_result(0.4)
    result["policies"]["hpa_exact"] = policy(74.0, 0.12, 14.0)
    result["calibration"] = {
        "hpa_exact": {
            "knobs": {"target_utilisation": 0.6, "tolerance": 0.05, "stabilisation_s": 150.0},
            "validation_return": 79.5,
            "validation_sla": 0.09,
            "chosen_by": "highest mean return",
            "grid": {"validation_return": [70.0, 79.5, 75.0]},
        }
    }
    scenario = {
        "policies": {
            "haql": policy(60.0, 0.2, 11.0),
            "hpa_exact_calibrated": policy(65.0, 0.1, 15.0),
        },
        "comparisons": {"haql_vs_hpa_exact_calibrated": {"return": comparison(-5.0, True)}},
        "targets": {"haql_beats_hpa_exact_calibrated": False},
    }
    result["scenarios"] = {"peak_x2": scenario}
    page = render_markdown({"ml": result}, {"command": "c", "device": "d", "wall_seconds": 60})
    # the calibrated row right above its default
    assert "| `hpa_exact` calibrated | 78.0 | 0.100 | 12.50 |" in page
    rows = [line.split(" |")[0] for line in page.splitlines()]
    assert rows.index("| `hpa_exact` calibrated") + 1 == rows.index("| `hpa_exact`")
    assert (
        "| `hpa_exact` | target_utilisation 0.6, tolerance 0.05, stabilisation_s 150 | 3 | 79.5 | "
        "74.0 → 78.0 | 0.120 → 0.100 | 14.00 → 12.50 |" in page
    )
    assert (
        "| peak_x2 | 60.0 / 65.0 | 0.200 / 0.100 | 11.00 / 15.00 | -5.0 [-6.0, -4.0] | **no** |"
        in page
    )
    assert "Scenario `peak_x2`:" in page
