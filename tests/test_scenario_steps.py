"""`scripts/scenario_steps.py`: a trained run's seeds beside `hpa_exact`, phase by phase, with
every count checked against records worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from script_runs import run_script
from tiny import tiny_overrides

from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY
from hmk8s.evaluate.phases import action_mix, phase_scores, pods_changed

LARGE = 2


def test_pods_changed_sums_each_clusters_moves_from_an_empty_start():
    ppc = np.array([[[1, 0], [3, 0], [2, 1], [2, 1]]])  # [episodes, steps, clusters]
    np.testing.assert_array_equal(pods_changed(ppc), [[1, 2, 2, 0]])


def test_action_mix_counts_kinds_repeated_reroutes_and_configs(quiet_params):
    lay = quiet_params("ml").layout
    deploy = lay.encode(0, OP_DEPLOY, LARGE, 1, 2)
    reroute = lay.encode(1, OP_ASSIGN, 0, 1, 0)
    actions = np.array([[deploy, reroute, reroute, lay.noop_index]])
    mix = action_mix(actions, lay, slice(0, 4))
    assert mix["share"] == {"deploy": 0.25, "remove": 0.0, "reroute": 0.5, "noop": 0.25}
    assert mix["repeated_reroutes"] == 0.5  # the second re-route repeats the first
    assert mix["deployed_configs"] == {"small": 0.0, "medium": 0.0, "large": 1.0}
    late = action_mix(actions, lay, slice(2, 4))  # the step before the phase counts
    assert late["repeated_reroutes"] == 1.0 and late["deployed_configs"] is None


def test_phase_scores_split_an_episode_at_the_bounds():
    records = {
        "reward": np.array([[1.0, 2.0, 3.0, 4.0]]),
        "sla_violated": np.array([[1, 0, 0, 1]]),
        "pods": np.array([[1, 3, 3, 2]]),
        "pods_per_cluster": np.array([[[1, 0], [3, 0], [3, 0], [1, 1]]]),
    }
    first, rest = phase_scores(records, [0, 1, 4], max_pods=3)
    assert first == {
        "steps": [0, 1],
        "return": 1.0,
        "sla_violation_rate": 1.0,
        "mean_pods": 1.0,
        "steps_at_cap": 0.0,
        "pods_changed": 1.0,
        "steps_changing_more_than_one": 0.0,
    }
    assert rest["steps"] == [1, 4] and rest["return"] == 9.0
    assert rest["sla_violation_rate"] == pytest.approx(1 / 3)
    assert rest["mean_pods"] == pytest.approx(8 / 3)
    assert rest["steps_at_cap"] == pytest.approx(2 / 3)  # cluster 0 holds 3 pods twice
    assert rest["pods_changed"] == pytest.approx(5 / 3)  # 2, 0 and 3 pods
    assert rest["steps_changing_more_than_one"] == pytest.approx(2 / 3)


def test_the_script_tables_a_tiny_run_and_refuses_an_unknown_load(tmp_path):
    # the tiny run other tests train too, so its compiled programs are shared (a DQN: no bonus)
    trained = run_script("train.py", tmp_path, *tiny_overrides("run_dir=run", narrow=True))
    assert trained.returncode == 0, trained.stderr
    common = ["run", "--target", "0.6", "--window", "0", "--episodes", "2"]
    out = run_script("scenario_steps.py", tmp_path, *common, "--load", "peak_x2")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["load"] == "peak_x2" and result["bonus"] == 0.0
    assert list(result["policies"]) == ["hpa_exact", "seed 0"]
    agent, hpa = result["policies"]["seed 0"], result["policies"]["hpa_exact"]
    assert [p["steps"] for p in agent["phases"]] == [[0, 10], [10, 40], [40, 120]]
    assert agent["episode"]["steps_changing_more_than_one"] == 0.0  # one action a step
    assert sum(agent["episode"]["actions"]["share"].values()) == pytest.approx(1.0)
    assert "actions" not in hpa["episode"]
    assert sum(p["return"] for p in hpa["phases"]) == pytest.approx(hpa["episode"]["return"])
    assert out.stdout.count("| seed 0 |") == 4
    bad = run_script("scenario_steps.py", tmp_path, *common, "--load", "peak_x3")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: unknown scenario 'peak_x3'; known: peak_x2, flash_crowd_x5, phase_shift, "
        "slow_ramp, capacity_loss"
    ]
