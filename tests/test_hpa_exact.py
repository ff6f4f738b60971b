"""`hpa_exact`: the HPA's algorithm as Kubernetes documents and runs it, against numbers worked
out by hand from the HPA page (https://kubernetes.io/docs/concepts/workloads/autoscaling/
horizontal-pod-autoscale/) and the controller's replica calculator.

Rule: desired = ceil(current * utilisation / target), skipped within the 0.1 tolerance;
utilisation in whole percent. Missing metrics count as 0 % on a scale-up and 100 % of the
request on a scale-down; unready (starting) pods as 0 % on a scale-up; when that recount is
within the tolerance or turns the direction, nothing changes. Default behaviour: scale up by at
most max(+4 pods, +100 %) per 15 s; scale down to the highest recommendation of the last 300 s.
ML use case: step 15 s (one sync per step), medium start-up 20 s (two steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.domain.observation import Observation
from hmk8s.domain.placement import scale_instances
from hmk8s.domain.spaces import action_mask
from hmk8s.policies.baselines import hpa_exact_policy, hpa_normalise, hpa_recommendation
from hmk8s.policies.rollout import rollout
from hmk8s.sim.env import ClusterEnv

pytestmark = pytest.mark.usefixtures("fast_compile")

ENC, FW = 0, 2
MEDIUM = 1


@pytest.mark.parametrize(
    ("current", "ready", "missing", "util", "expected"),
    [
        # target 80 %. The page's example: twice the target doubles, half of it halves
        (3, 3, 0, 1.6, 6),  # 160 / 80 = 2: ceil(3 * 2) = 6
        (4, 4, 0, 0.4, 2),  # 40 / 80 = 0.5: ceil(4 * 0.5) = 2
        (3, 3, 0, 0.4, 2),  # ceil(3 * 0.5) = ceil(1.5) = 2
        (3, 3, 0, 0.85, 3),  # 85 / 80 = 1.0625: within the tolerance, unchanged
        (3, 3, 0, 0.0, 0),  # no load: ceil(0) = 0 (the behaviour's minimum of 1 comes later)
        # two of four pods just ready, no metrics; the other two at 160 % (scale-up): missing
        # count 0 %, mean (2 * 160 + 2 * 0) / 4 = 80 %, ratio 1: within the tolerance
        (4, 4, 2, 1.6, 4),
        # same at 200 %: mean 100 %, ratio 1.25: ceil(1.25 * 4) = 5 (not ceil(2.5 * 2) = 5+)
        (4, 4, 2, 2.0, 5),
        # scale-down with two missing at 100 %: (2 * 20 + 2 * 100) / 4 = 60 %, ratio 0.75:
        # ceil(0.75 * 4) = 3, where the measured pods alone would say ceil(0.25 * 2) = 1
        (4, 4, 2, 0.2, 3),
        # three starting pods, two ready at 120 %: ratio 1.5 is a scale-up, so the starting
        # pods count 0 %: (2 * 120) / 5 = 48 %, ratio 0.6 turns the direction: unchanged
        (5, 2, 0, 1.2, 5),
        # the same at 300 %: 600 / 5 = 120 %, ratio 1.5: ceil(1.5 * 5) = 8
        (5, 2, 0, 3.0, 8),
        # starting pods do not count on a scale-down: 20 / 80 = 0.25, ceil(0.25 * 2) = 1
        (5, 2, 0, 0.2, 1),
        # no pod with metrics yet: nothing to go by, unchanged
        (2, 0, 0, 0.0, 2),
        (2, 2, 2, 0.0, 2),
    ],
)
def test_recommendation_by_hand(current, ready, missing, util, expected):
    got = hpa_recommendation(
        jnp.asarray([current]),
        jnp.asarray([ready]),
        jnp.asarray([missing]),
        jnp.asarray([util], jnp.float32),
        0.8,
    )
    assert int(got[0]) == expected


def test_utilisation_is_read_in_whole_percent():
    # 0.869 reads 86 %: 86 / 80 = 1.075, within the tolerance; 0.8999 reads 89 %: 1.1125 is not
    got = hpa_recommendation(
        jnp.asarray([10, 10]),
        jnp.asarray([10, 10]),
        jnp.zeros(2, jnp.int32),
        jnp.asarray([0.869, 0.8999], jnp.float32),
        0.8,
    )
    assert got.tolist() == [10, 12]  # ceil(10 * 89 / 80) = ceil(11.125) = 12


@pytest.mark.parametrize(
    ("current", "desired", "window_max", "syncs", "expected"),
    [
        (2, 20, 20, 1, 6),  # +4 pods beats +100 % (4): 6
        (10, 25, 25, 1, 20),  # +100 % (20) beats +4 (14): 20
        (2, 20, 20, 2, 12),  # two syncs a step: 2 -> 6 -> max(10, 12) = 12
        (3, 5, 5, 1, 5),  # within the limit: as recommended
        (5, 2, 4, 1, 4),  # scale-down held at the window's highest recommendation, 4
        (5, 2, 7, 1, 5),  # a higher recommendation in the window: no scale-down
        (5, 2, 2, 1, 2),  # the window agrees: down to 2 at once (100 % per 15 s)
        (5, 0, 0, 1, 1),  # never below the minimum of one replica
    ],
)
def test_behaviour_by_hand(current, desired, window_max, syncs, expected):
    got = hpa_normalise(
        jnp.asarray([current]), jnp.asarray([desired]), jnp.asarray([window_max]), syncs
    )
    assert int(got[0]) == expected


def _obs(params, fw_ready, fw_pending, fw_util):
    """Firewall (0, medium) with `fw_ready` ready and `fw_pending` starting pods at `fw_util`;
    encrypt (0, medium) one pod exactly at the target; every proxy routed to both."""
    ready = np.zeros((3, 3, 3), np.int32)
    ready[0, FW, MEDIUM], ready[0, ENC, MEDIUM] = fw_ready, 1
    replicas = ready.copy()
    replicas[0, FW, MEDIUM] += fw_pending
    util = np.zeros((3, 3, 3), np.float32)
    util[0, FW, MEDIUM], util[0, ENC, MEDIUM] = fw_util, 0.8
    routes = np.full((3, 3), -1, np.int32)
    routes[:, FW] = routes[:, ENC] = 0 * 3 + MEDIUM
    replicas = jnp.asarray(replicas)
    return Observation(
        cpu_util=jnp.zeros(3),
        pods=replicas.sum(axis=(1, 2)),
        replicas=replicas,
        ready=jnp.asarray(ready),
        instance_util=jnp.asarray(util),
        routes=jnp.asarray(routes),
        latency_ratio=jnp.full(3, 0.5),
        rates=jnp.asarray([50.0, 40.0, 30.0]),
        action_mask=action_mask(params.layout, replicas, params.max_pods, params.in_chain),
    )


def test_policy_scales_every_instance_and_waits_300_s_to_scale_down(ml):
    policy = hpa_exact_policy()
    act = jax.jit(policy.act)
    key = jax.random.PRNGKey(0)
    pstate = policy.init(ml)
    # 2 firewall pods at 240 %: ratio 3 -> ceil(6) = 6, capped at max(2 + 4, 4) = 6 in one sync
    (action, replicas), pstate = act(key, pstate, _obs(ml, 2, 0, 2.4), ml)
    assert int(action) == ml.layout.noop_index  # nothing broken: the HPA only scales
    assert int(replicas[0, FW, MEDIUM]) == 6 and int(replicas[0, ENC, MEDIUM]) == 1
    # next sync: 2 ready (measured, 80 %), 4 starting: ratio 1, unchanged
    (_, replicas), pstate = act(key, pstate, _obs(ml, 2, 4, 0.8), ml)
    assert int(replicas[0, FW, MEDIUM]) == 6
    # the load falls to 10 % on 6 ready pods, 4 of them new (missing, 100 % on a scale-down):
    # (2 * 10 + 4 * 100) / 6 = 70 %, ratio 0.875: ceil(5.25) = 6, unchanged
    (_, replicas), pstate = act(key, pstate, _obs(ml, 6, 0, 0.1), ml)
    assert int(replicas[0, FW, MEDIUM]) == 6
    # now all 6 measured at 10 %: ceil(6 * 10 / 80) = 1, but the window still holds the 6
    # recommended at syncs 0, 1 and 2: a recommendation stays in it while it is less than
    # 300 s (20 syncs) old, so sync 2's 6 holds the count through sync 21
    for sync in range(3, 22):
        (_, replicas), pstate = act(key, pstate, _obs(ml, 6, 0, 0.1), ml)
        assert int(replicas[0, FW, MEDIUM]) == 6, sync
    # sync 22: sync 2's 6 is 300 s old, out of the window: down to 1 at once
    (_, replicas), pstate = act(key, pstate, _obs(ml, 6, 0, 0.1), ml)
    assert int(replicas[0, FW, MEDIUM]) == 1


def test_scale_instances_by_hand(ml):
    _, state = jax.jit(ClusterEnv().reset)(jax.random.PRNGKey(0), ml)  # the empty start
    ready = np.zeros((3, 3, 3), np.int32)
    pending = np.zeros((3, 3, 3, ml.pending_depth), np.int32)
    assert ml.pending_depth == 3  # large pods start in 40 s: up to 3 steps
    ready[0, FW, MEDIUM], pending[0, FW, MEDIUM] = 2, [1, 1, 0]  # 2 ready, 2 starting
    ready[0, ENC, MEDIUM] = 5  # cluster 0 holds 9 of its 10 pods
    ready[1, ENC, MEDIUM] = 1
    state = state.replace(ready=jnp.asarray(ready), pending=jnp.asarray(pending))
    target = np.asarray(state.replicas).copy()
    target[0, FW, MEDIUM] = 1  # 4 -> 1: both starting pods (latest first), then one ready
    target[0, ENC, MEDIUM] = 9  # +4 wanted; cluster 0 has room for 1 + the 3 freed = 4
    target[1, ENC, MEDIUM] = 3  # +2: medium starts in 20 s = 2 steps, so in slot 1
    target[2, ENC, MEDIUM] = 4  # no instance there: none is created
    scale = jax.jit(scale_instances)
    out = scale(state, jnp.asarray(target), ml)
    assert int(out.ready[0, FW, MEDIUM]) == 1 and out.pending[0, FW, MEDIUM].tolist() == [0, 0, 0]
    assert int(out.ready[0, ENC, MEDIUM]) == 5 and out.pending[0, ENC, MEDIUM].tolist() == [0, 4, 0]
    assert out.pending[1, ENC, MEDIUM].tolist() == [0, 2, 0]
    assert int(out.replicas[2].sum()) == 0
    assert out.replicas.sum(axis=(1, 2)).tolist() == [10, 3, 0]
    # never below one pod: an instance is not removed
    zero = scale(state, jnp.zeros_like(state.replicas), ml)
    assert zero.replicas.sum(axis=(1, 2)).tolist() == [2, 1, 0]


def test_rollout_scales_by_more_than_one_pod_a_step(ml):
    records = rollout(ClusterEnv(), ml, hpa_exact_policy(), jax.random.PRNGKey(3), 2)
    pods = np.asarray(records["pods"])
    assert np.abs(np.diff(pods, axis=1)).max() > 1  # the agent's actions change one pod
    assert not np.asarray(records["invalid"]).any()
