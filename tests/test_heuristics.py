"""The operator's rulebook on hand-built observations, one per rule, and as a property.

ML use case: chain firewall -> encrypt, proxies 0, 1, 2 homed on clusters 0, 1, 2, delays
[[0, 8, 20], [8, 0, 12], [20, 12, 0]] ms, max 10 pods per cluster, 3*3*3*3*3 = 243 grid
actions and the no-op at 243. Action index = (((k*3 + op)*3 + c)*3 + f)*3 + p with op
remove 0, assign 1, deploy 2.
Service rates mu (requests/s per pod), small / medium / large: firewall 60 / 120 / 220,
encrypt 40 / 80 / 150; pressure = routed rate / (pods * mu), rules at 0.6 (scale out) and
0.45 (scale in, pressure without the pod), comfortable under 0.6 of the SLA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.domain.observation import Observation
from hmk8s.domain.settings import params_from_usecase
from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE, action_mask
from hmk8s.domain.usecases import load_usecase
from hmk8s.policies.heuristics import heuristic_values, recommend

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


def test_repair_assigns_the_nearest_instance_that_can_take_the_rate(ml, rec):
    obs = _obs(
        ml,
        ready={(0, FW, MEDIUM): 1, (1, ENC, SMALL): 1, (2, ENC, LARGE): 2},
        routes={
            (0, FW): inst(0, MEDIUM),  # proxy 0 (50/s): its encrypt hop is broken
            (1, FW): inst(0, MEDIUM),
            (1, ENC): inst(1, SMALL),
            (2, FW): inst(0, MEDIUM),
            (2, ENC): inst(2, LARGE),
        },
        latency=[16.7, 0.5, 0.5],
    )
    # encrypt (1, small), 8 ms from home 0: 40 + 50 = 90/s > 0.6 * 40 -> cannot take it;
    # encrypt (2, large), 20 ms: 30 + 50 = 80/s <= 0.6 * 2 * 150 = 180 -> assign it there
    # (((2*3 + 1)*3 + 2)*3 + 0)*3 + 0 = (23*3)*3 = 207
    assert ml.layout.encode(2, OP_ASSIGN, LARGE, ENC, 0) == 207
    assert int(rec(obs, ml)) == 207


def test_repair_starts_with_the_busiest_broken_proxy(ml, rec):
    ready = {(1, FW, LARGE): 1, (1, ENC, LARGE): 1}
    routes = {(0, FW): inst(1, LARGE), (1, FW): inst(1, LARGE), (1, ENC): inst(1, LARGE)}
    routes[(2, ENC)] = inst(1, LARGE)  # proxy 0: encrypt broken; proxy 2: firewall broken
    latency = [16.7, 0.5, 16.7]
    rates = [20.0, 30.0, 10.0]
    # proxy 0 (20/s) busier than proxy 2 (10/s): its encrypt -> encrypt (1, large), which
    # takes 30 + 10 + 20 = 60/s <= 0.6 * 150 = 90
    # (((1*3 + 1)*3 + 2)*3 + 0)*3 + 0 = (14*3)*3 = 126
    obs = _obs(ml, ready=ready, routes=routes, latency=latency, rates=rates)
    assert ml.layout.encode(1, OP_ASSIGN, LARGE, ENC, 0) == 126
    assert int(rec(obs, ml)) == 126
    # proxy 2 busier: its firewall hop -> firewall (1, large): 20 + 30 + 25 = 75 <= 132
    # (((1*3 + 1)*3 + 2)*3 + 2)*3 + 2 = (14*3 + 2)*3 + 2 = 134
    obs = _obs(ml, ready=ready, routes=routes, latency=latency, rates=[20.0, 30.0, 25.0])
    assert ml.layout.encode(1, OP_ASSIGN, LARGE, FW, 2) == 134
    assert int(rec(obs, ml)) == 134


def test_repair_deploys_on_home_when_no_instance_can_take_the_rate(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (1, ENC, SMALL): 1}
    routes = {(p, FW): inst(0, MEDIUM) for p in range(3)}
    routes[(1, ENC)] = inst(1, SMALL)  # encrypt (1, small): 40/s on 40/s
    obs = _obs(ml, ready=ready, routes=routes, latency=[16.7, 0.5, 16.7])
    # busiest broken proxy 0 (50/s): deploy a medium (default) encrypt on its home, cluster 0
    # (((0*3 + 2)*3 + 1)*3 + 0)*3 + 0 = (7*3)*3 = 63
    assert ml.layout.encode(0, OP_DEPLOY, MEDIUM, ENC, 0) == 63
    assert int(rec(obs, ml)) == 63


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


def test_repair_with_every_cluster_full_assigns_the_nearest_instance(ml, rec):
    ready = {(0, ENC, SMALL): 10, (1, ENC, SMALL): 10, (2, FW, SMALL): 1, (2, ENC, SMALL): 9}
    routes = {(p, ENC): inst(p, SMALL) for p in range(3)}
    routes[(1, FW)] = routes[(2, FW)] = inst(2, SMALL)  # firewall (2, small): 70/s on 60/s
    obs = _obs(ml, ready=ready, routes=routes, latency=[16.7, 2.0, 2.0])
    # proxy 0's firewall: nothing takes 50/s more, no room anywhere -> the only firewall
    # (((2*3 + 1)*3 + 0)*3 + 2)*3 + 0 = (21*3 + 2)*3 = 195
    assert ml.layout.encode(2, OP_ASSIGN, SMALL, FW, 0) == 195
    assert int(rec(obs, ml)) == 195


# --- rule 2: scale out on pressure or on an SLA breach -----------------------------------------

PRESSED_READY = {(0, FW, LARGE): 1, (0, ENC, LARGE): 2}
PRESSED_ROUTES = {(p, f): inst(0, LARGE) for p in range(3) for f in (FW, ENC)}
PRESSED_RATES = [100.0, 40.0, 30.0]  # 170/s: firewall 170/220 = 0.77, encrypt 170/300 = 0.57


def test_pressure_over_target_scales_out_in_place(ml, rec):
    obs = _obs(
        ml, ready=PRESSED_READY, routes=PRESSED_ROUTES, latency=[0.5] * 3, rates=PRESSED_RATES
    )
    # firewall (0, large) is the most pressed (0.77 > 0.6); its busiest proxy 0 is homed on 0;
    # pods/10 + delay/20 ms from 0: cluster 0: 0.3, cluster 1: 0.4, cluster 2: 1.0
    # (((0*3 + 2)*3 + 2)*3 + 2)*3 + 0 = (8*3 + 2)*3 = 78
    assert ml.layout.encode(0, OP_DEPLOY, LARGE, FW, 0) == 78
    assert int(rec(obs, ml)) == 78


def test_pressure_counts_the_pods_already_starting(ml, rec):
    obs = _obs(
        ml,
        ready=PRESSED_READY,
        routes=PRESSED_ROUTES,
        latency=[0.5] * 3,
        rates=PRESSED_RATES,
        starting={(0, FW, LARGE): 1},
    )
    # firewall: 170 / (2 * 220) = 0.39; nothing else applies (encrypt without one pod: 1.13)
    assert int(rec(obs, ml)) == NOOP


def test_pressure_with_a_full_home_scales_out_on_the_emptiest_nearby_cluster(ml, rec):
    ready = {**PRESSED_READY, (0, ENC, SMALL): 7}  # cluster 0: 10 pods, full
    obs = _obs(ml, ready=ready, routes=PRESSED_ROUTES, latency=[0.5] * 3, rates=PRESSED_RATES)
    # cluster 1: 0 + 8/20 = 0.4, cluster 2: 0 + 20/20 = 1.0 -> a large firewall on cluster 1
    # for proxy 0: (((1*3 + 2)*3 + 2)*3 + 2)*3 + 0 = (17*3 + 2)*3 = 159
    assert ml.layout.encode(1, OP_DEPLOY, LARGE, FW, 0) == 159
    assert int(rec(obs, ml)) == 159


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
# pressures: firewall (0, medium) 40/120 = 0.33, encrypt (0, medium) 40/80 = 0.5,
# firewall (2, small) 30/60 = 0.5, encrypt (2, medium) 30/80 = 0.375: none over 0.6
BREACH_RATES = [20.0, 20.0, 30.0]


def test_breach_scales_out_the_worst_proxys_most_pressed_hop(ml, rec):
    obs = _obs(
        ml, ready=BREACH_READY, routes=BREACH_ROUTES, latency=[0.5, 0.9, 1.5], rates=BREACH_RATES
    )
    # worst proxy 2 (ratio 1.5 > 1); its most pressed hop: firewall (2, small), 0.5.
    # emptiest nearby cluster, pods/10 + delay from home 2 / 20 ms:
    #   cluster 0: 2/10 + 20/20 = 1.2; cluster 1: 1/10 + 12/20 = 0.7; cluster 2: 8/10 + 0 = 0.8
    # -> a small firewall on cluster 1 for proxy 2:
    # (((1*3 + 2)*3 + 0)*3 + 2)*3 + 2 = (15*3 + 2)*3 + 2 = 143
    assert ml.layout.encode(1, OP_DEPLOY, SMALL, FW, 2) == 143
    assert int(rec(obs, ml)) == 143


def test_breach_while_the_hop_is_starting_pods_goes_on_to_the_next_rules(ml, rec):
    obs = _obs(
        ml,
        ready=BREACH_READY,
        routes=BREACH_ROUTES,
        latency=[0.5, 0.9, 1.5],
        rates=BREACH_RATES,
        starting={(2, FW, SMALL): 1, (2, ENC, MEDIUM): 1},
    )
    # proxy 2's most pressed hop is firewall (2, small), 30/120 = 0.25, starting a pod: no
    # scale-out; rule 3: proxy 1 (20/s) sends firewall to cluster 0 while the small
    # firewall on its home cluster 1 is ready and idle (20 <= 0.6 * 60)
    # (((1*3 + 1)*3 + 0)*3 + 2)*3 + 1 = (12*3 + 2)*3 + 1 = 115
    assert ml.layout.encode(1, OP_ASSIGN, SMALL, FW, 1) == 115
    assert int(rec(obs, ml)) == 115


# --- rule 3: route hops home ------------------------------------------------------------------

HOME_ROUTES = {(p, f): inst(0, MEDIUM) for p in range(3) for f in (FW, ENC)}
LOW_RATES = [20.0, 15.0, 10.0]  # 45/s: firewall (0, medium) 0.375, encrypt (0, medium) 0.56


def test_away_route_is_assigned_home(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1, (1, FW, SMALL): 1}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8] * 3, rates=LOW_RATES)
    # proxy 1 (home 1) sends firewall to cluster 0 while a small firewall is ready on cluster 1
    # and takes its 15/s (<= 0.6 * 60): 115, as above
    assert int(rec(obs, ml)) == 115


def test_home_instance_too_small_for_the_proxy_is_not_a_target(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 2, (1, FW, SMALL): 1}
    rates = [20.0, 40.0, 10.0]  # 70/s: firewall (0, medium) 0.58, encrypt (0, medium) 0.44
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8] * 3, rates=rates)
    # proxy 1's 40/s > 0.6 * 60: it stays; rule 4 removes the unrouted small firewall
    # (((1*3 + 0)*3 + 0)*3 + 2)*3 + 0 = (9*3 + 2)*3 = 87
    assert ml.layout.encode(1, OP_REMOVE, SMALL, FW, 0) == 87
    assert int(rec(obs, ml)) == 87


def test_home_instance_still_starting_is_not_a_target(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1}
    routes = {**HOME_ROUTES, (2, FW): inst(1, SMALL)}  # routed, so not removed as unused
    obs = _obs(
        ml,
        ready=ready,
        routes=routes,
        latency=[0.8] * 3,
        rates=LOW_RATES,
        starting={(1, FW, SMALL): 1},
    )
    assert int(rec(obs, ml)) == NOOP


# --- rule 4: scale in -------------------------------------------------------------------------


def test_comfortable_removes_the_pod_that_leaves_the_least_pressure(ml, rec):
    ready = {(0, FW, MEDIUM): 3, (0, ENC, MEDIUM): 2}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.3, 0.4, 0.5], rates=LOW_RATES)
    # without one pod: firewall 45/240 = 0.19, encrypt 45/80 = 0.56 (over 0.45, kept)
    # (((0*3 + 0)*3 + 1)*3 + 2)*3 + 0 = (1*3 + 2)*3 = 15
    assert ml.layout.encode(0, OP_REMOVE, MEDIUM, FW, 0) == 15
    assert int(rec(obs, ml)) == 15


def test_unrouted_instance_is_removed_even_when_not_comfortable(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1, (0, ENC, LARGE): 1}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8] * 3, rates=LOW_RATES)
    # (((0*3 + 0)*3 + 2)*3 + 0)*3 + 0 = (2*3)*3 = 18
    assert ml.layout.encode(0, OP_REMOVE, LARGE, ENC, 0) == 18
    assert int(rec(obs, ml)) == 18


def test_comfortable_but_removal_would_press_too_hard_is_a_noop(ml, rec):
    ready = {(0, FW, MEDIUM): 2, (0, ENC, MEDIUM): 2}
    # 60/s; without one pod: firewall 60/120 = 0.5, encrypt 60/80 = 0.75, both over 0.45
    obs = _obs(
        ml, ready=ready, routes=HOME_ROUTES, latency=[0.3, 0.4, 0.5], rates=[30.0, 20.0, 10.0]
    )
    assert int(rec(obs, ml)) == NOOP


# --- rule 5 and H(s, .) -----------------------------------------------------------------------


def test_otherwise_noop(ml, rec):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8] * 3, rates=LOW_RATES)
    assert int(rec(obs, ml)) == NOOP


def test_no_rule_without_a_noop_returns_minus_one(rec):
    params = params_from_usecase(load_usecase("ml"), {"noop": False})
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1}
    obs = _obs(params, ready=ready, routes=HOME_ROUTES, latency=[0.8] * 3, rates=LOW_RATES)
    assert params.layout.noop_index == -1
    assert int(rec(obs, params)) == -1  # documented: "-1 without one"


def test_heuristic_values_put_eta_at_the_recommendation(ml):
    ready = {(0, FW, MEDIUM): 1, (0, ENC, MEDIUM): 1, (1, FW, SMALL): 1}
    obs = _obs(ml, ready=ready, routes=HOME_ROUTES, latency=[0.8] * 3, rates=LOW_RATES)
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
