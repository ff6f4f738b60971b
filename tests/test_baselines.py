"""Baselines: the HPA rule and its scale-down window, the static placement, fair evaluation.

ML use case: chain firewall -> encrypt, proxies 0, 1, 2 homed on clusters 0, 1, 2 with base
rates 50, 40, 30 req/s and diurnal amplitude 0.2, medium mu: firewall 120, encrypt 80,
step 15 s. Action index = (((k*3 + op)*3 + c)*3 + f)*3 + p; the no-op is 243.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.domain.metrics import summarise
from hmk8s.domain.observation import Observation
from hmk8s.domain.spaces import OP_DEPLOY, OP_REMOVE, action_mask
from hmk8s.policies.baselines import (
    BASELINES,
    hpa_desired,
    hpa_policy,
    random_policy,
    static_policy,
    static_target,
)
from hmk8s.policies.rollout import rollout
from hmk8s.sim.env import ClusterEnv

pytestmark = pytest.mark.usefixtures("fast_compile")

ENC, DEC, FW = 0, 1, 2
SMALL, MEDIUM, LARGE = 0, 1, 2
NOOP = 243


# --- the HPA rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "util", "expected"),
    [
        (2, 1.2, 3),  # ratio 1.2/0.8 = 1.5: ceil(2*1.5) = 3
        (5, 0.9, 6),  # ratio 1.125: ceil(5.625) = 6
        (3, 0.84, 3),  # ratio 1.05, within the 10 % tolerance: unchanged
        (3, 0.76, 3),  # ratio 0.95, within the tolerance
        (4, 0.2, 1),  # ratio 0.25: ceil(1.0) = 1
        (3, 0.5, 2),  # ratio 0.625: ceil(1.875) = 2
        (1, 0.0, 1),  # ceil(0) = 0 -> at least 1
        (2, 8.0, 6),  # ratio 10: ceil(20) = 20, capped at max(2 + 4, 2*2) = 6
        (10, 2.0, 20),  # ratio 2.5: ceil(25) = 25, capped at max(14, 20) = 20
        (0, 1.5, 0),  # no instance: nothing to scale
    ],
)
def test_hpa_desired_by_hand(replicas, util, expected):
    got = hpa_desired(jnp.asarray([replicas]), jnp.asarray([util], jnp.float32), 0.8)
    assert int(got[0]) == expected


def _hpa_obs(params, fw_util, fw_ready=3):
    """Firewall (0, medium) with `fw_ready` pods, encrypt (0, medium) with 1 at utilisation 0.8
    (exactly the target); every proxy routed to both."""
    ready = np.zeros((3, 3, 3), np.int32)
    ready[0, FW, MEDIUM], ready[0, ENC, MEDIUM] = fw_ready, 1
    util = np.zeros((3, 3, 3), np.float32)
    util[0, FW, MEDIUM], util[0, ENC, MEDIUM] = fw_util, 0.8
    routes = np.full((3, 3), -1, np.int32)
    routes[:, FW] = routes[:, ENC] = 0 * 3 + MEDIUM
    replicas = jnp.asarray(ready)
    return Observation(
        cpu_util=jnp.zeros(3),
        pods=replicas.sum(axis=(1, 2)),
        replicas=replicas,
        ready=replicas,
        instance_util=jnp.asarray(util),
        routes=jnp.asarray(routes),
        latency_ratio=jnp.full(3, 0.5),
        rates=jnp.asarray([50.0, 40.0, 30.0]),
        action_mask=action_mask(params.layout, replicas, params.max_pods, params.in_chain),
    )


def test_hpa_scale_down_waits_for_the_stabilisation_window(ml):
    policy = hpa_policy()  # target 0.8, window 300 s
    pstate = policy.init(ml)
    window = 300 // 15  # 20 recommendations of 15 s
    assert pstate.history.shape == (window, 3, 3, 3)
    act = jax.jit(policy.act)
    key = jax.random.PRNGKey(0)
    # step 0: firewall at the target (0.8): desired 3 = replicas, nothing to do
    action, pstate = act(key, pstate, _hpa_obs(ml, 0.8), ml)
    assert int(action) == NOOP
    # then the load drops: utilisation 0.2 -> desired ceil(3*0.25) = 1, but the
    # recommendation of 3 made at step 0 stays in the window for steps 1..19
    low = _hpa_obs(ml, 0.2)
    actions = []
    for _ in range(window):
        action, pstate = act(key, pstate, low, ml)
        actions.append(int(action))
    assert actions[: window - 1] == [NOOP] * (window - 1)
    # step 20: 300 s after the last high recommendation it has left the window -> remove one
    # firewall (0, medium): (((0*3 + 0)*3 + 1)*3 + 2)*3 + 0 = 15
    assert ml.layout.encode(0, OP_REMOVE, MEDIUM, FW, 0) == 15
    assert actions[-1] == 15


def test_hpa_scales_up_at_once(ml):
    policy = hpa_policy()
    # utilisation 1.6: ratio 2 -> desired ceil(3*2) = 6 > 3 -> deploy through a routed proxy
    action, _ = jax.jit(policy.act)(jax.random.PRNGKey(0), policy.init(ml), _hpa_obs(ml, 1.6), ml)
    # proxy 0 is the first routed to firewall (0, medium):
    # (((0*3 + 2)*3 + 1)*3 + 2)*3 + 0 = (7*3 + 2)*3 = 69
    assert ml.layout.encode(0, OP_DEPLOY, MEDIUM, FW, 0) == 69
    assert int(action) == 69


# --- static placement and fair evaluation -----------------------------------------------------


def test_static_target_by_hand(ml):
    # peak per home cluster = base * (1 + 0.2): 60, 48, 36 req/s; medium at 70 % headroom:
    # firewall 120*0.7 = 84/s per pod -> ceil(60/84) = ceil(48/84) = ceil(36/84) = 1
    # encrypt 80*0.7 = 56/s per pod -> ceil(60/56) = 2, ceil(48/56) = 1, ceil(36/56) = 1
    expected = np.zeros((3, 3, 3), int)
    expected[:, FW, MEDIUM] = [1, 1, 1]
    expected[:, ENC, MEDIUM] = [2, 1, 1]
    np.testing.assert_array_equal(static_target(ml), expected)


@pytest.fixture(scope="module")
def static_and_random(ml):
    env = ClusterEnv()
    key = jax.random.PRNGKey(21)
    return rollout(env, ml, static_policy(), key, 2), rollout(env, ml, random_policy(), key, 2)


def test_static_policy_reaches_its_target_and_holds(ml, static_and_random):
    records, _ = static_and_random
    # from the empty start, one deploy a step in (cluster, function, config) order, each
    # through the first proxy homed on that cluster (all medium, c = 1):
    # (((k*3 + 2)*3 + 1)*3 + f)*3 + p; k*3 + 2 then *3 + 1 gives 7, 16, 25 for k = 0, 1, 2
    deploys = [
        ml.layout.encode(0, OP_DEPLOY, MEDIUM, ENC, 0),  # (7*3 + 0)*3 + 0 = 63
        ml.layout.encode(0, OP_DEPLOY, MEDIUM, ENC, 0),  # 63 again: encrypt needs 2 pods
        ml.layout.encode(0, OP_DEPLOY, MEDIUM, FW, 0),  # (7*3 + 2)*3 + 0 = 69
        ml.layout.encode(1, OP_DEPLOY, MEDIUM, ENC, 1),  # (16*3 + 0)*3 + 1 = 145
        ml.layout.encode(1, OP_DEPLOY, MEDIUM, FW, 1),  # (16*3 + 2)*3 + 1 = 151
        ml.layout.encode(2, OP_DEPLOY, MEDIUM, ENC, 2),  # (25*3 + 0)*3 + 2 = 227
        ml.layout.encode(2, OP_DEPLOY, MEDIUM, FW, 2),  # (25*3 + 2)*3 + 2 = 233
    ]
    assert deploys == [63, 63, 69, 145, 151, 227, 233]
    expected = deploys + [NOOP] * 5  # then every proxy is routed home: hold
    for episode in range(2):
        assert np.asarray(records["action"][episode]).tolist() == expected
        assert not np.asarray(records["invalid"][episode]).any()
        # pods per cluster after step 7 onwards: 2 + 1, 1 + 1, 1 + 1
        np.testing.assert_array_equal(records["pods_per_cluster"][episode, 6:], [[3, 2, 2]] * 6)


def test_policies_face_the_same_episodes(static_and_random):
    static, rand = static_and_random
    assert static["rates"].shape == (2, 12, 3)
    np.testing.assert_allclose(static["rates"], rand["rates"], rtol=1e-6)
    # the two episodes differ from each other, and the policies acted differently
    assert not np.allclose(static["rates"][0], static["rates"][1])
    assert not np.array_equal(static["action"], rand["action"])


def test_summarise(static_and_random):
    static, _ = static_and_random
    summary = summarise(static)
    returns = np.asarray(static["reward"]).sum(axis=1)
    assert summary["episode_returns"] == pytest.approx(returns.tolist(), abs=1e-5)
    assert summary["return"] == pytest.approx(returns.mean(), abs=1e-5)
    assert summary["invalid_rate"] == 0.0
    assert set(summary) == {
        "return",
        "return_std",
        "episode_returns",
        "sla_violation_rate",
        "mean_pods",
        "p95_latency_ratio",
        "invalid_rate",
    }


def test_baseline_registry():
    assert set(BASELINES) == {"random", "static", "heuristic", "hpa", "hpa_exact"}
