"""The operator's rulebook on hand-built observations, one per rule, and as a property.

ML use case: chain firewall -> encrypt, proxies 0, 1, 2 homed on clusters 0, 1, 2, delays
[[0, 8, 20], [8, 0, 12], [20, 12, 0]] ms, max 10 pods per cluster, 3*3*3*3*3 = 243 grid
actions and the no-op at 243. busy = utilisation * request / limit = utilisation / 2.
Action index = (((k*3 + op)*3 + c)*3 + f)*3 + p with op remove 0, assign 1, deploy 2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.heuristics import heuristic_values, recommend
from hmk8s.observation import Observation
from hmk8s.sim.params import params_from_usecase
from hmk8s.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE, action_mask
from hmk8s.usecases import load_usecase

pytestmark = pytest.mark.usefixtures("fast_compile")

ENC, DEC, FW = 0, 1, 2
SMALL, MEDIUM, LARGE = 0, 1, 2
NOOP = 243


def inst(k, c):
    return k * 3 + c


@pytest.fixture(scope="module")
def ml():
    return params_from_usecase(load_usecase("ml"))


@pytest.fixture(scope="module")
def rec():
    return jax.jit(recommend)


def _obs(params, *, ready, routes, latency, rates=(50.0, 40.0, 30.0), util=None, starting=None):
    """An observation: `ready` and `starting` map (k, f, c) -> pods, `routes` (p, f) -> inst."""
    ready_a = np.zeros((3, 3, 3), np.int32)
    for idx, n in ready.items():
        ready_a[idx] = n
    replicas = ready_a.copy()
    for idx, n in (starting or {}).items():
        replicas[idx] += n
    routes_a = np.full((3, 3), -1, np.int32)
    for idx, i in routes.items():
        routes_a[idx] = i
    util_a = np.zeros((3, 3, 3), np.float32)
    for idx, u in (util or {}).items():
        util_a[idx] = u
    replicas = jnp.asarray(replicas)
    return Observation(
        cpu_util=jnp.zeros(3),
        pods=replicas.sum(axis=(1, 2)),
        replicas=replicas,
        ready=jnp.asarray(ready_a),
        instance_util=jnp.asarray(util_a),
        routes=jnp.asarray(routes_a),
        latency_ratio=jnp.asarray(latency, jnp.float32),
        rates=jnp.asarray(rates, jnp.float32),
        action_mask=action_mask(params.layout, replicas, params.max_pods, params.in_chain),
    )


# --- rule 1: repair a broken hop --------------------------------------------------------------


def test_repair_assigns_the_existing_instance_nearest_home(ml, rec):
    obs = _obs(
        ml,
        ready={(1, FW, MEDIUM): 1, (1, ENC, SMALL): 1, (2, ENC, MEDIUM): 1},
        routes={
            (0, FW): inst(1, MEDIUM),  # proxy 0's encrypt hop is broken
            (1, FW): inst(1, MEDIUM),
            (1, ENC): inst(1, SMALL),
            (2, FW): inst(1, MEDIUM),
            (2, ENC): inst(2, MEDIUM),
        },
        latency=[16.7, 0.5, 0.5],
    )
    # encrypt exists on cluster 1 (8 ms from home 0) and cluster 2 (20 ms): cluster 1, small
    # (((1*3 + 1)*3 + 0)*3 + 0)*3 + 0 = ((12)*3)*3 = 108
    assert ml.layout.encode(1, OP_ASSIGN, SMALL, ENC, 0) == 108
    assert int(rec(obs, ml)) == 108


def test_repair_starts_with_the_busiest_broken_proxy(ml, rec):
    ready = {(1, FW, MEDIUM): 1, (1, ENC, SMALL): 1}
    routes = {(0, FW): inst(1, MEDIUM), (1, FW): inst(1, MEDIUM), (1, ENC): inst(1, SMALL)}
    routes[(2, ENC)] = inst(1, SMALL)  # proxy 0: encrypt broken; proxy 2: firewall broken
    latency = [16.7, 0.5, 16.7]
    # proxy 0 (50/s) busier than proxy 2 (30/s): repair proxy 0's encrypt -> 108 (as above)
    assert int(rec(_obs(ml, ready=ready, routes=routes, latency=latency), ml)) == 108
    # proxy 2 busier: its firewall hop -> the firewall on cluster 1 (medium), proxy 2
    # (((1*3 + 1)*3 + 1)*3 + 2)*3 + 2 = ((13*3 + 2)*3) + 2 = 41*3 + 2 = 125
    obs = _obs(ml, ready=ready, routes=routes, latency=latency, rates=[10.0, 40.0, 30.0])
    assert ml.layout.encode(1, OP_ASSIGN, MEDIUM, FW, 2) == 125
    assert int(rec(obs, ml)) == 125


def test_repair_deploys_on_home_when_the_function_is_nowhere(ml, rec):
    ready = {(1, ENC, MEDIUM): 1}
    routes = {(p, ENC): inst(1, MEDIUM) for p in range(3)}  # no firewall anywhere
    obs = _obs(ml, ready=ready, routes=routes, latency=[16.7] * 3, rates=[20.0, 60.0, 30.0])
    # busiest proxy 1 (home 1): deploy a medium (default) firewall on cluster 1
    # (((1*3 + 2)*3 + 1)*3 + 2)*3 + 1 = ((16*3 + 2)*3) + 1 = 50*3 + 1 = 151
    assert ml.layout.encode(1, OP_DEPLOY, MEDIUM, FW, 1) == 151
    assert int(rec(obs, ml)) == 151


def test_repair_deploys_on_the_nearest_cluster_with_room_when_home_is_full(ml, rec):
    ready = {(1, ENC, MEDIUM): 1, (1, ENC, SMALL): 9}  # cluster 1: 10 pods, full
    routes = {(p, ENC): inst(1, MEDIUM) for p in range(3)}
    obs = _obs(ml, ready=ready, routes=routes, latency=[16.7] * 3, rates=[20.0, 60.0, 30.0])
    # from home 1: cluster 0 is 8 ms away, cluster 2 12 ms -> cluster 0
    # (((0*3 + 2)*3 + 1)*3 + 2)*3 + 1 = ((7*3 + 2)*3) + 1 = 23*3 + 1 = 70
    assert ml.layout.encode(0, OP_DEPLOY, MEDIUM, FW, 1) == 70
    assert int(rec(obs, ml)) == 70


# --- rule 2: scale out on an SLA breach -------------------------------------------------------

BREACH_READY = {
    (0, FW, MEDIUM): 1,
    (0, ENC, MEDIUM): 1,
    (1, FW, SMALL): 1,  # cluster 1: 1 pod
    (2, FW, SMALL): 1,
    (2, ENC, MEDIUM): 1,
    (2, FW, LARGE): 6,  # cluster 2: 8 pods
}
BREACH_ROUTES = {
    (0, FW): inst(0, MEDIUM),
    (0, ENC): inst(0, MEDIUM),
    (1, FW): inst(0, MEDIUM),
    (1, ENC): inst(0, MEDIUM),
    (2, FW): inst(2, SMALL),
    (2, ENC): inst(2, MEDIUM),
}
# firewall (2, small) utilisation 0.8 -> busy 0.4; encrypt (2, medium) 1.9 -> busy 0.95
BREACH_UTIL = {(2, FW, SMALL): 0.8, (2, ENC, MEDIUM): 1.9, (0, FW, MEDIUM): 1.0}


def test_breach_scales_out_the_most_loaded_hop(ml, rec):
    obs = _obs(
        ml, ready=BREACH_READY, routes=BREACH_ROUTES, latency=[0.5, 0.9, 1.5], util=BREACH_UTIL
    )
    # worst proxy 2 (ratio 1.5 > 1); its busiest hop: encrypt (2, medium), busy 0.95.
    # emptiest nearby cluster, pods/10 + delay from home 2 / 20 ms:
    #   cluster 0: 2/10 + 20/20 = 1.2; cluster 1: 1/10 + 12/20 = 0.7; cluster 2: 8/10 + 0 = 0.8
    # -> deploy medium encrypt on cluster 1 for proxy 2:
    # (((1*3 + 2)*3 + 1)*3 + 0)*3 + 2 = (16*3)*3 + 2 = 146
    assert ml.layout.encode(1, OP_DEPLOY, MEDIUM, ENC, 2) == 146
    assert int(rec(obs, ml)) == 146


def test_breach_waits_while_the_hop_is_starting_pods(ml, rec):
    obs = _obs(
        ml,
        ready=BREACH_READY,
        routes=BREACH_ROUTES,
        latency=[0.5, 0.9, 1.5],
        util=BREACH_UTIL,
        starting={(2, ENC, MEDIUM): 1},
    )
    assert int(rec(obs, ml)) == NOOP


# --- rule 3: route hops home ------------------------------------------------------------------

HOME_ROUTES = {(p, f): inst(0, MEDIUM) for p in range(3) for f in (FW, ENC)}


def test_away_route_is_assigned_home(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1, (1, FW, SMALL): 1}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8, 0.8, 0.8])
    # proxy 1 (home 1) sends firewall to cluster 0 while a small firewall is ready on cluster 1
    # (((1*3 + 1)*3 + 0)*3 + 2)*3 + 1 = (12*3 + 2)*3 + 1 = 38*3 + 1 = 115
    assert ml.layout.encode(1, OP_ASSIGN, SMALL, FW, 1) == 115
    assert int(rec(obs, ml)) == 115


def test_home_instance_still_starting_is_not_a_target(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8] * 3, starting={(1, FW, SMALL): 1})
    assert int(rec(obs, ml)) == NOOP


# --- rule 4: scale in when comfortable ------------------------------------------------------


def test_comfortable_removes_the_least_busy_replica(ml, rec):
    ready = {(0, FW, MEDIUM): 3, (0, ENC, MEDIUM): 1}
    # firewall (0, medium): utilisation 0.4 -> busy 0.2; after one removal 0.2*3/2 = 0.3 < 0.6
    util = {(0, FW, MEDIUM): 0.4, (0, ENC, MEDIUM): 0.6}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.3, 0.4, 0.5], util=util)
    # (((0*3 + 0)*3 + 1)*3 + 2)*3 + 0 = (1*3 + 2)*3 = 15
    assert ml.layout.encode(0, OP_REMOVE, MEDIUM, FW, 0) == 15
    assert int(rec(obs, ml)) == 15


def test_comfortable_removes_an_idle_duplicate_instance(ml, rec):
    ready = {(0, FW, MEDIUM): 3, (0, ENC, MEDIUM): 1, (0, ENC, LARGE): 1}
    util = {(0, FW, MEDIUM): 0.4, (0, ENC, MEDIUM): 0.6}  # encrypt (0, large) idle: busy 0
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.3, 0.4, 0.5], util=util)
    # (((0*3 + 0)*3 + 2)*3 + 0)*3 + 0 = (2*3)*3 = 18
    assert ml.layout.encode(0, OP_REMOVE, LARGE, ENC, 0) == 18
    assert int(rec(obs, ml)) == 18


def test_comfortable_but_removal_would_overload_is_a_noop(ml, rec):
    ready = {(0, FW, MEDIUM): 3, (0, ENC, MEDIUM): 1}
    # busy 0.5; after one removal 0.5*3/2 = 0.75 >= 0.6: keep it
    util = {(0, FW, MEDIUM): 1.0, (0, ENC, MEDIUM): 0.6}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.3, 0.4, 0.5], util=util)
    assert int(rec(obs, ml)) == NOOP


# --- rule 5 and H(s, .) -----------------------------------------------------------------------


def test_otherwise_noop(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8, 0.8, 0.8])
    assert int(rec(obs, ml)) == NOOP


def test_no_rule_without_a_noop_returns_minus_one(rec):
    params = params_from_usecase(load_usecase("ml"), {"noop": False})
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1}
    obs = _obs(params, ready=ready, routes=HOME_ROUTES, latency=[0.8, 0.8, 0.8])
    assert params.layout.noop_index == -1
    assert int(rec(obs, params)) == -1  # documented: "-1 without one"


def test_heuristic_values_put_eta_at_the_recommendation(ml):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1, (1, FW, SMALL): 1}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8, 0.8, 0.8])
    values = np.asarray(jax.jit(heuristic_values)(obs, ml, 2.5))
    assert values.shape == (244,)
    assert values[115] == 2.5
    assert np.count_nonzero(values) == 1 and values.sum() == 2.5


@pytest.mark.parametrize("name", ["ehr", "ml", "stream"])
def test_recommendation_is_always_allowed(random_trajectories, name):
    params, _, _, records = random_trajectories(name)
    obs = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), records["obs"])
    actions = np.asarray(jax.jit(jax.vmap(lambda o: recommend(o, params)))(obs))
    masks = np.asarray(obs.action_mask)
    assert ((actions >= 0) & (actions < params.layout.num_actions)).all()
    assert masks[np.arange(len(actions)), actions].all()
    # the random states exercise more than the no-op
    assert (actions != params.layout.noop_index).any()
