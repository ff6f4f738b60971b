"""Shifted loads and calibrated baselines: each scenario changes the load or the clusters as it
says, and a calibration grid scores every setting as that policy alone would score.

ML use case: proxies homed on clusters 0, 1, 2 with base rates 50, 40, 30 req/s; episodes of
12 steps here, so mid-episode is step 6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.evaluate.calibrate import choose, score_grid
from hmk8s.policies.baselines import static_policy
from hmk8s.policies.rollout import rollout
from hmk8s.sim.dynamics import cluster_speed, request_rates, serve
from hmk8s.sim.env import ClusterEnv
from hmk8s.sim.scenarios import SCENARIOS, ScenarioError, check_scenarios, shifted, stacked

pytestmark = pytest.mark.usefixtures("fast_compile")


@jax.jit
def _rates(params, shift, t):
    """The rates of step ``t`` from one fixed key and state, under the scenario ``shift``."""
    _, state = ClusterEnv().reset(jax.random.PRNGKey(0), params)
    state = state.replace(time=jnp.asarray(t, jnp.int32))
    return request_rates(jax.random.PRNGKey(1), state, shifted(params, shift))[0]


def test_scenarios_scale_the_load_as_named(ml):
    shifts = stacked(ml, list(SCENARIOS))
    each = {name: {f: v[i] for f, v in shifts.items()} for i, name in enumerate(SCENARIOS)}
    base = {f: getattr(ml, f) for f in shifts}
    for t in (0, 5, 6, 9, 10):
        default = np.asarray(_rates(ml, base, t))
        ratio = lambda name, t=t, d=default: np.asarray(_rates(ml, each[name], t)) / d  # noqa: E731
        np.testing.assert_allclose(ratio("peak_x2"), 2.0, rtol=1e-6)
        # five times the rate for 4 steps from step 12 // 2 = 6
        np.testing.assert_allclose(ratio("flash_crowd_x5"), 5.0 if 6 <= t < 10 else 1.0, rtol=1e-6)
        # from 1x to 2x over the 12 steps: 1 + t / 12
        np.testing.assert_allclose(ratio("slow_ramp"), 1.0 + t / 12, rtol=1e-6)
        np.testing.assert_allclose(ratio("capacity_loss"), 1.0)  # the load stays
    np.testing.assert_allclose(each["phase_shift"]["phase"], np.asarray(ml.phase) + np.pi)
    # the busiest proxy (50 req/s) is homed on cluster 0: it runs at half speed from step 6
    lost = shifted(ml, each["capacity_loss"])
    assert cluster_speed(jnp.int32(5), lost).tolist() == [1.0, 1.0, 1.0]
    assert cluster_speed(jnp.int32(6), lost).tolist() == [0.5, 1.0, 1.0]


def test_half_speed_doubles_service_time(ml):
    # one idle ready pod per instance: latency is the service time 1 / (mu * speed)
    ready = jnp.ones((3, 3, 3), jnp.int32)
    zero = jnp.zeros((3, 3, 3))
    _, _, latency = serve(zero, ready, zero, ml, jnp.asarray([0.5, 1.0, 1.0]))
    np.testing.assert_allclose(latency[0], 2.0 / np.asarray(ml.mu), rtol=1e-6)
    np.testing.assert_allclose(latency[1], 1.0 / np.asarray(ml.mu), rtol=1e-6)


def test_unknown_scenario_is_named():
    assert check_scenarios(["peak_x2"]) == ["peak_x2"]
    with pytest.raises(ScenarioError, match="unknown scenario 'peak_x3'; known: peak_x2"):
        check_scenarios(["peak_x2", "peak_x3"])


def test_calibration_scores_each_setting_as_the_policy_alone(ml):
    # static's headroom, the cheapest grid to compile (the HPAs' grids run in the CLI test)
    env, key = ClusterEnv(), jax.random.PRNGKey(4)
    returns, sla = score_grid(env, ml, static_policy, {"headroom": [0.4, 0.9]}, key, 2)
    assert returns[0] != returns[1]
    alone = rollout(env, ml, static_policy(0.9), key, 2)
    assert returns[1] == pytest.approx(float(alone["reward"].sum(axis=1).mean()), abs=1e-3)
    assert sla[1] == pytest.approx(float(alone["sla_violated"].mean()), abs=1e-6)


def test_calibration_keeps_the_best_validation_return_first_of_a_tie():
    knobs = {"headroom": [0.4, 0.6, 0.8, 1.0]}
    chosen = choose(knobs, np.array([50.0, 71.5, 71.5, 12.0]), np.array([0.3, 0.2, 0.1, 0.9]), 8)
    assert chosen["knobs"] == {"headroom": 0.6}
    assert (chosen["validation_return"], chosen["validation_sla"]) == (71.5, pytest.approx(0.2))
    assert chosen["grid"]["headroom"] == [0.4, 0.6, 0.8, 1.0]
    assert "8 validation episodes" in chosen["chosen_by"]
