"""The simulator's dynamics against numbers worked out by hand.

Indices: functions (encrypt, decrypt, firewall) = (0, 1, 2); configs (small, medium, large) =
(0, 1, 2); an instance id is ``cluster * 3 + config``. Unless a test says otherwise it runs
the ML use case (chain firewall -> encrypt, proxies homed on clusters 0, 1, 2 with base rates
50, 40, 30 req/s, step 15 s, SLA 60 ms, timeout 1 s, delays [[0, 8, 20], [8, 0, 12],
[20, 12, 0]] ms, alpha 0.3, beta 0.7) with every source of noise switched off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from indices import DEC, ENC, FW, LARGE, MEDIUM, SMALL, inst

from hmk8s.domain.observation import Observation, chain_latency_ratio
from hmk8s.domain.reward import perf_reward, resource_reward, reward
from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE

pytestmark = pytest.mark.usefixtures("fast_compile")

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def ml(quiet_params):
    """ML with a flat load: every proxy sends exactly its base rate (50, 40, 30)."""
    return quiet_params("ml", wave=False)


@pytest.fixture(scope="module")
def step_env(jitted):
    return jitted.step_env


@pytest.fixture(scope="module")
def sim(jitted):
    """The jitted simulator pieces (compiled once per session)."""
    return jitted


def _grid(entries, dtype=jnp.float32):
    a = jnp.zeros((3, 3, 3), dtype)
    for idx, v in entries.items():
        a = a.at[idx].set(v)
    return a


# --- one queue --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "backlog", "exp_backlog", "exp_busy", "exp_latency"),
    [
        # 2 ready medium firewall pods: mu = 120, capacity n*mu = 240 req/s, dt = 15 s.
        # underloaded, queue drains: b' = max(0, 100 + (180 - 240)*15) = max(0, -800) = 0
        # rho = 180/240 = 0.75; latency = 1/120 + 0.75/0.25/120 + 0 = 0.0083333 + 0.025
        (180.0, 100.0, 0.0, 0.75, 1 / 120 + 3 / 120),
        # partly drained: b' = 1000 + (200 - 240)*15 = 400; busy = 1 (a backlog remains)
        # rho = 200/240 = 0.8333; rho/(1-rho) = 5; latency = 1/120 + 5/120 + 400/240
        (200.0, 1000.0, 400.0, 1.0, 1 / 120 + 5 / 120 + 400 / 240),
        # overloaded: b' = 100 + (300 - 240)*15 = 1000; rho = 1.25 -> capped at 0.95
        # latency = 1/120 + 0.95/0.05/120 + 1000/240 = 0.0083333 + 0.1583333 + 4.1666667
        (300.0, 100.0, 1000.0, 1.0, 1 / 120 + 19 / 120 + 1000 / 240),
        # idle: b' = 0, rho = 0, latency = the service time 1/120
        (0.0, 0.0, 0.0, 0.0, 1 / 120),
    ],
)
def test_serve_one_queue_by_hand(sim, ml, load, backlog, exp_backlog, exp_busy, exp_latency):
    ready = _grid({(1, FW, MEDIUM): 2}, jnp.int32)
    b, busy, lat = sim.serve(
        _grid({(1, FW, MEDIUM): load}), ready, _grid({(1, FW, MEDIUM): backlog}), ml
    )
    assert float(b[1, FW, MEDIUM]) == pytest.approx(exp_backlog, abs=1e-3)
    assert float(busy[1, FW, MEDIUM]) == pytest.approx(exp_busy, rel=1e-6)
    assert float(lat[1, FW, MEDIUM]) == pytest.approx(exp_latency, rel=1e-5)
    # every other instance has no ready pod: no backlog, not busy, latency = the timeout (1 s)
    others = np.ones((3, 3, 3), bool)
    others[1, FW, MEDIUM] = False
    assert np.all(np.asarray(b)[others] == 0) and np.all(np.asarray(busy)[others] == 0)
    np.testing.assert_allclose(np.asarray(lat)[others], 1.0)


@pytest.mark.parametrize(("cv2", "factor"), [(0.0, 0.5), (0.5, 0.75), (1.0, 1.0), (3.0, 2.0)])
def test_the_wait_follows_pollaczek_khinchine(sim, ml, cv2, factor):
    """M/G/1: the wait is (1 + cv^2) / 2 of M/M/1's. 2 medium firewall pods (mu = 120,
    capacity 240), load 180: rho = 0.75, M/M/1 wait = 0.75 / 0.25 / 120 = 0.025 s; with a
    fixed service (cv^2 = 0, M/D/1) half of it, 0.0125 s, on top of the 1/120 s service."""
    params = ml.replace(wait_factor=jnp.full_like(ml.wait_factor, (1.0 + cv2) / 2.0))
    ready = _grid({(1, FW, MEDIUM): 2}, jnp.int32)
    _, _, lat = sim.serve(_grid({(1, FW, MEDIUM): 180.0}), ready, _grid({}), params)
    assert float(lat[1, FW, MEDIUM]) == pytest.approx(1 / 120 + factor * 3 / 120, rel=1e-5)


def test_service_cv2_of_a_use_case_sets_the_wait_factor(usecase_mapping):
    from hmk8s.domain.settings import params_from_usecase
    from hmk8s.domain.usecases import UseCase

    mapping = usecase_mapping("ml")
    assert np.all(np.asarray(params_from_usecase(UseCase.model_validate(mapping)).wait_factor) == 1)
    for configs in mapping["functions"].values():
        for config in configs.values():
            config["service_cv2"] = 0.0
    params = params_from_usecase(UseCase.model_validate(mapping))
    np.testing.assert_array_equal(np.asarray(params.wait_factor), 0.5)


def test_serve_without_ready_pods_drops_backlog_and_times_out(sim, ml):
    # one pod still starting (not ready): requests fail instead of queueing
    b, busy, lat = sim.serve(
        _grid({(0, ENC, SMALL): 30.0}),
        _grid({}, jnp.int32),
        _grid({(0, ENC, SMALL): 77.0}),
        ml,
    )
    assert float(b[0, ENC, SMALL]) == 0.0
    assert float(busy[0, ENC, SMALL]) == 0.0
    assert float(lat[0, ENC, SMALL]) == pytest.approx(1.0)  # timeout_ms 1000


# --- a whole placement ------------------------------------------------------------------------
#
# ready: firewall (0, medium) x2, encrypt (0, medium) x1, encrypt (2, large) x1,
#        firewall (1, small) x1 (idle); encrypt (1, small) has one pod still starting.
# routes (firewall hop, encrypt hop):
#   proxy 0 (home 0, 50/s): fw -> inst 1 = (0, medium), enc -> inst 8 = (2, large)
#   proxy 1 (home 1, 40/s): fw -> inst 1,               enc -> inst 1 = (0, medium)
#   proxy 2 (home 2, 30/s): fw -> inst 1,               enc -> inst 3 = (1, small), no ready pod
# backlogs: encrypt (0, medium) 650, encrypt (1, small) 77.

READY = {(0, FW, MEDIUM): 2, (0, ENC, MEDIUM): 1, (2, ENC, LARGE): 1, (1, FW, SMALL): 1}
PENDING = {(1, ENC, SMALL, 0): 1}
ROUTES = {
    (0, FW): inst(0, MEDIUM),
    (0, ENC): inst(2, LARGE),
    (1, FW): inst(0, MEDIUM),
    (1, ENC): inst(0, MEDIUM),
    (2, FW): inst(0, MEDIUM),
    (2, ENC): inst(1, SMALL),
}
BACKLOG = {(0, ENC, MEDIUM): 650.0, (1, ENC, SMALL): 77.0}

# instance loads: fw (0, med) = 50 + 40 + 30 = 120; enc (2, large) = 50; enc (0, med) = 40;
# enc (1, small) = 30
LOAD = {
    (0, FW, MEDIUM): 120.0,
    (2, ENC, LARGE): 50.0,
    (0, ENC, MEDIUM): 40.0,
    (1, ENC, SMALL): 30.0,
}
# fw (0, med):  capacity 2*120 = 240; b' = max(0, 0 + (120 - 240)*15) = 0; rho = 0.5 = busy;
#               hop = 1/120 + 0.5/0.5/120 = 2/120 = 0.0166667
# enc (0, med): capacity 80; b' = max(0, 650 + (40 - 80)*15) = 50; busy = 1; rho = 0.5;
#               hop = 1/80 + 0.5/0.5/80 + 50/80 = 52/80 = 0.65
# enc (2, large): capacity 150; b' = 0; rho = 1/3 = busy; hop = 1/150 + 0.5/150 = 0.01
# enc (1, small): no ready pod: b' = 0, busy 0, hop = timeout 1.0
# fw (1, small): capacity 60, no load: b' = 0, busy 0, hop = 1/60
BACKLOG_NEXT = {(0, ENC, MEDIUM): 50.0}
BUSY = {(0, FW, MEDIUM): 0.5, (0, ENC, MEDIUM): 1.0, (2, ENC, LARGE): 1 / 3}
HOP = {
    (0, FW, MEDIUM): 2 / 120,
    (0, ENC, MEDIUM): 0.65,
    (2, ENC, LARGE): 0.01,
    (1, ENC, SMALL): 1.0,
    (1, FW, SMALL): 1 / 60,
}
# chain latency = network (home -> hop 1 -> hop 2 -> home) + hops:
#   proxy 0: home 0 -> 0 -> 2 -> 0: 0 + 20 + 20 = 40 ms; hops 2/120 + 0.01 -> 0.0666667
#   proxy 1: home 1 -> 0 -> 0 -> 1: 8 + 0 + 8 = 16 ms; hops 2/120 + 0.65 -> 0.6826667
#   proxy 2: home 2 -> 0 -> 1 -> 2: 20 + 8 + 12 = 40 ms; hops 2/120 + 1.0 -> capped at 1.0
CHAIN = [0.040 + 2 / 120 + 0.01, 0.016 + 2 / 120 + 0.65, 1.0]
# CPU (limit / request = 2 for every config):
#   instance util = busy * 2: fw (0, med) 1.0; enc (0, med) 2.0; enc (2, large) 0.6667
#   cluster 0: used 2 pods*0.5*1.0 + 1*1.0*1.0 = 2.0 cores of 2*0.5 + 0.5 = 1.5 asked -> 1.3333
#   cluster 1: idle small firewall: 0 / 0.25 -> 0; cluster 2: 1/3*2.0 / 1.0 -> 0.6667
INST_UTIL = {(0, FW, MEDIUM): 1.0, (0, ENC, MEDIUM): 2.0, (2, ENC, LARGE): 2 / 3}
CLUSTER_CPU = [2.0 / 1.5, 0.0, 2 / 3]


def _dense(entries):
    a = np.zeros((3, 3, 3))
    for idx, v in entries.items():
        a[idx] = v
    return a


@pytest.fixture(scope="module")
def placement(ml, make_state):
    return make_state(ml, ready=READY, pending=PENDING, routes=ROUTES, backlog=BACKLOG)


def test_instance_load_by_hand(sim, ml, placement):
    load = sim.instance_load(placement.routes, jnp.asarray([50.0, 40.0, 30.0]), ml)
    np.testing.assert_allclose(load, _dense(LOAD), rtol=1e-6)


def test_serve_placement_by_hand(sim, ml, placement):
    b, busy, hop = sim.serve(
        jnp.asarray(_dense(LOAD), jnp.float32), placement.ready, placement.backlog, ml
    )
    np.testing.assert_allclose(b, _dense(BACKLOG_NEXT), atol=1e-3)
    np.testing.assert_allclose(busy, _dense(BUSY), rtol=1e-6, atol=1e-7)
    for idx, v in HOP.items():
        assert float(hop[idx]) == pytest.approx(v, rel=1e-5), idx


def test_chain_latency_by_hand(sim, ml, placement):
    _, _, hop = sim.serve(
        jnp.asarray(_dense(LOAD), jnp.float32), placement.ready, placement.backlog, ml
    )
    np.testing.assert_allclose(sim.chain_latency(placement.routes, hop, ml), CHAIN, rtol=1e-5)
    # break proxy 0's firewall hop: its chain times out, the others are unchanged
    broken = placement.routes.at[0, FW].set(-1)
    np.testing.assert_allclose(sim.chain_latency(broken, hop, ml), [1.0, *CHAIN[1:]], rtol=1e-5)


def test_chain_latency_hand_hop_values(sim, ml):
    # hop latencies given directly: fw (1, small) = 0.005, enc (1, small) = 0.007
    hop = _grid({(1, FW, SMALL): 0.005, (1, ENC, SMALL): 0.007})
    routes = jnp.full((3, 3), -1, jnp.int32).at[:, FW].set(inst(1, SMALL))
    routes = routes.at[:, ENC].set(inst(1, SMALL))
    # proxy 0: 0 -> 1 -> 1 -> 0 = 8 + 0 + 8 = 16 ms; proxy 1: all local = 0 ms;
    # proxy 2: 2 -> 1 -> 1 -> 2 = 12 + 0 + 12 = 24 ms; each plus 0.005 + 0.007 = 0.012
    np.testing.assert_allclose(
        sim.chain_latency(routes, hop, ml), [0.028, 0.012, 0.036], rtol=1e-5, atol=1e-7
    )


def test_cpu_utilisation_by_hand(sim, ml, placement):
    inst_util, cluster = sim.cpu_utilisation(
        placement.ready, jnp.asarray(_dense(BUSY), jnp.float32), ml
    )
    np.testing.assert_allclose(inst_util, _dense(INST_UTIL), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cluster, CLUSTER_CPU, rtol=1e-6, atol=1e-7)


def test_step_measures_the_placement_by_hand(ml, placement, step_env):
    obs, nxt, r, terminated, truncated, info = step_env(KEY, placement, jnp.int32(243), ml)
    assert not bool(info["invalid"])
    np.testing.assert_allclose(obs.rates, [50.0, 40.0, 30.0], rtol=1e-6)
    np.testing.assert_allclose(nxt.backlog, _dense(BACKLOG_NEXT), atol=1e-3)
    np.testing.assert_allclose(obs.cpu_util, CLUSTER_CPU, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(obs.instance_util, _dense(INST_UTIL), rtol=1e-5, atol=1e-6)
    # latency / SLA (60 ms): 0.0666667/0.06 = 1.1111; 0.6826667/0.06 = 11.3778; 1/0.06 = 16.667
    ratios = [c / 0.06 for c in CHAIN]
    np.testing.assert_allclose(obs.latency_ratio, ratios, rtol=1e-5)
    # L = (50*1.1111 + 40*11.3778 + 30*16.6667) / 120 = 1010.667 / 120 = 8.42222
    assert float(info["latency_ratio"]) == pytest.approx(1010.6667 / 120, rel=1e-5)
    assert bool(info["sla_violated"])
    # the starting small encrypt pod (1 step of start-up) is ready after this step
    assert int(nxt.ready[1, ENC, SMALL]) == 1 and int(nxt.pending.sum()) == 0
    np.testing.assert_array_equal(obs.pods, [3, 2, 1])  # 2 + 1; 1 + 1; 1
    # R = 0.3*(1 - 6/30) + 0.7*clip(1 - 2*(8.4222 - 1), -1, 1) = 0.3*0.8 + 0.7*(-1) = -0.46
    assert int(info["pods"]) == 6
    assert float(r) == pytest.approx(-0.46, abs=1e-6)
    assert int(nxt.time) == 1
    assert not bool(terminated) and not bool(truncated)


def test_step_reward_within_sla_by_hand(ml, make_state, step_env):
    # every proxy: firewall and encrypt on its own home cluster, large configs
    ready = {}
    routes = {}
    for p in range(3):
        ready[(p, FW, LARGE)] = 1
        ready[(p, ENC, LARGE)] = 1
        routes[(p, FW)] = inst(p, LARGE)
        routes[(p, ENC)] = inst(p, LARGE)
    state = make_state(ml, ready=ready, routes=routes)
    obs, _, r, _, _, info = step_env(KEY, state, jnp.int32(243), ml)
    # proxy 0 (50/s): fw mu 220, rho = 50/220; hop = (1 + rho/(1-rho))/220 = 1/(220 - 50) = 1/170
    #                 enc mu 150: hop = 1/(150 - 50) = 1/100; no network: 0.0058824 + 0.01
    # proxy 1 (40/s): 1/180 + 1/110; proxy 2 (30/s): 1/190 + 1/120
    lat = [1 / 170 + 1 / 100, 1 / 180 + 1 / 110, 1 / 190 + 1 / 120]
    np.testing.assert_allclose(obs.latency_ratio, [v / 0.06 for v in lat], rtol=1e-5)
    # L = (50*0.26471 + 40*0.24411 + 30*0.22661) / 120 < 1 -> R_perf = 1
    expected_l = (50 * lat[0] + 40 * lat[1] + 30 * lat[2]) / 0.06 / 120
    assert float(info["latency_ratio"]) == pytest.approx(expected_l, rel=1e-5)
    assert not bool(info["sla_violated"])
    # R = 0.3*(1 - 6/30) + 0.7*1 = 0.24 + 0.7 = 0.94
    assert float(r) == pytest.approx(0.94, abs=1e-6)


# --- reward by hand ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pods", "ratio", "expected"),
    [
        (6, 0.9, 0.3 * 0.8 + 0.7 * 1.0),  # within SLA: 0.24 + 0.7 = 0.94
        (6, 1.0, 0.94),  # exactly at the SLA: no penalty
        (6, 1.1, 0.3 * 0.8 + 0.7 * 0.8),  # breach 10 %: R_perf = 1 - 0.2 = 0.8 -> 0.80
        (15, 1.5, 0.3 * 0.5 + 0.7 * 0.0),  # breach 50 %: R_perf = 0 -> 0.15
        (0, 1.75, 0.3 * 1.0 + 0.7 * -0.5),  # R_perf = 1 - 1.5 = -0.5 -> -0.05
        (30, 2.0, 0.0 + 0.7 * -1.0),  # R_perf = -1 -> -0.7
        (3, 9.0, 0.3 * 0.9 - 0.7),  # clipped at -1: 1 - 16 = -15 -> -1 -> -0.43
    ],
)
def test_reward_by_hand(pods, ratio, expected):
    r = reward(jnp.float32(pods), jnp.float32(ratio), alpha=0.3, beta=0.7, pods_max=30)
    assert float(r) == pytest.approx(expected, abs=1e-6)


def test_reward_parts():
    assert float(perf_reward(jnp.float32(1.25))) == pytest.approx(0.5)  # 1 - 2*0.25
    assert float(perf_reward(jnp.float32(100.0))) == -1.0
    assert float(perf_reward(jnp.float32(0.0))) == 1.0
    assert float(resource_reward(jnp.float32(12), 30)) == pytest.approx(0.6)  # 1 - 12/30


def _latency_obs(rates, ratios):
    n = len(rates)
    z = jnp.zeros((3, 3, 3))
    return Observation(
        cpu_util=jnp.zeros(3),
        pods=jnp.zeros(3, jnp.int32),
        replicas=z.astype(jnp.int32),
        ready=z.astype(jnp.int32),
        instance_util=z,
        routes=jnp.full((n, 3), -1, jnp.int32),
        latency_ratio=jnp.asarray(ratios, jnp.float32),
        rates=jnp.asarray(rates, jnp.float32),
        action_mask=jnp.ones(10, bool),
    )


def test_request_weighted_latency_ratio_by_hand():
    # (30*1.2 + 10*0.8) / 40 = (36 + 8) / 40 = 1.1
    assert float(chain_latency_ratio(_latency_obs([30, 10], [1.2, 0.8]))) == pytest.approx(1.1)
    # no load at all: every proxy weighs the same, (0.5 + 1.5 + 4.0) / 3 = 2.0
    ratio = chain_latency_ratio(_latency_obs([0, 0, 0], [0.5, 1.5, 4.0]))
    assert float(ratio) == pytest.approx(2.0)


# --- the load profile -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        # EHR proxies: base (30, 25, 20), A = 0.4, period 1800 s, phase (0, 0.5, 1.0), dt 15 s.
        # t = 0: sin(0) = 0, sin(0.5) = 0.4794255, sin(1) = 0.8414710
        (0, [30.0, 25 * (1 + 0.4 * 0.4794255), 20 * (1 + 0.4 * 0.8414710)]),
        # t = 30: 450 s = a quarter period -> sin(pi/2 + phase) = cos(phase):
        # cos(0) = 1, cos(0.5) = 0.8775826, cos(1) = 0.5403023
        (30, [30 * 1.4, 25 * (1 + 0.4 * 0.8775826), 20 * (1 + 0.4 * 0.5403023)]),
        # t = 60: half a period -> sin(pi + phase) = -sin(phase)
        (60, [30.0, 25 * (1 - 0.4 * 0.4794255), 20 * (1 - 0.4 * 0.8414710)]),
        # t = 90: three quarters -> sin(3 pi/2 + phase) = -cos(phase)
        (90, [30 * 0.6, 25 * (1 - 0.4 * 0.8775826), 20 * (1 - 0.4 * 0.5403023)]),
        # t = 120: a full period -> sin(phase) again
        (120, [30.0, 25 * (1 + 0.4 * 0.4794255), 20 * (1 + 0.4 * 0.8414710)]),
    ],
)
def test_diurnal_rates_by_hand(sim, quiet_params, make_state, t, expected):
    params = quiet_params("ehr")
    rates, burst_left, _ = sim.request_rates(KEY, make_state(params, time=t), params)
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    np.testing.assert_array_equal(burst_left, [0, 0, 0])


def test_burst_multiplies_the_rate(sim, quiet_params, make_state):
    # a burst that always starts, lasts 3 steps, doubles the rate (fixed factor)
    params = quiet_params("ehr", wave=False)
    params = params.replace(
        burst_prob=jnp.ones(3), burst_factor=jnp.full(3, 2.0), burst_steps=jnp.full(3, 3)
    )
    state = make_state(params)
    rates, left, level = sim.request_rates(KEY, state, params)
    np.testing.assert_allclose(rates, [60.0, 50.0, 40.0], rtol=1e-6)  # 2 * (30, 25, 20)
    np.testing.assert_array_equal(left, [2, 2, 2])  # 3 steps, this one used
    # a running burst continues without redrawing
    state = state.replace(burst_left=left, burst_level=level)
    rates, left, _ = sim.request_rates(KEY, state, params.replace(burst_prob=jnp.zeros(3)))
    np.testing.assert_allclose(rates, [60.0, 50.0, 40.0], rtol=1e-6)
    np.testing.assert_array_equal(left, [1, 1, 1])


# --- deploy / remove / assign -----------------------------------------------------------------


def _apply(sim, params, state, k, op, c, f, p, key=KEY):
    action = params.layout.encode(k, op, c, f, p)
    new, invalid = sim.apply_action(key, state, jnp.int32(action), params)
    return new, bool(invalid)


@pytest.mark.parametrize(
    ("config", "steps"),
    # ceil(startup_s / 15): small 10 s -> 1 step, medium 20 s -> 2, large 40 s -> 3
    [(SMALL, 1), (MEDIUM, 2), (LARGE, 3)],
)
def test_deploy_becomes_ready_after_startup_steps(ml, make_state, step_env, config, steps):
    state = make_state(ml)
    action = ml.layout.encode(1, OP_DEPLOY, config, FW, 0)
    _, state, _, _, _, info = step_env(KEY, state, jnp.int32(action), ml)
    assert not bool(info["invalid"])
    assert int(state.routes[0, FW]) == inst(1, config)  # proxy 0's firewall hop routed to it
    assert int(state.routes[1, FW]) == -1  # other proxies untouched
    for n in range(1, steps + 1):
        if n > 1:
            _, state, _, _, _, info = step_env(KEY, state, jnp.int32(ml.layout.noop_index), ml)
        ready = int(state.ready[1, FW, config])
        assert ready == (1 if n == steps else 0), f"after step {n}"
        assert int(state.replicas[1, FW, config]) == 1  # pending + ready: always one pod
        assert int(state.pending.sum()) == (0 if n == steps else 1)


def test_deploy_with_zero_startup_is_ready_at_once(sim, quiet_params, make_state):
    mapping_fn = {"small": {"cpu_request": 0.25, "cpu_limit": 0.5, "mu": 60, "startup_s": 0}}
    fw = {
        **mapping_fn,
        "medium": {"cpu_request": 0.5, "cpu_limit": 1.0, "mu": 120, "startup_s": 20},
        "large": {"cpu_request": 1.0, "cpu_limit": 2.0, "mu": 220, "startup_s": 40},
    }
    enc = {
        "small": {"cpu_request": 0.25, "cpu_limit": 0.5, "mu": 40, "startup_s": 10},
        "medium": {"cpu_request": 0.5, "cpu_limit": 1.0, "mu": 80, "startup_s": 20},
        "large": {"cpu_request": 1.0, "cpu_limit": 2.0, "mu": 150, "startup_s": 40},
    }
    params = quiet_params("ml", functions={"encrypt": enc, "decrypt": enc, "firewall": fw})
    assert int(params.startup_steps[FW, SMALL]) == 0
    new, invalid = _apply(sim, params, make_state(params), 2, OP_DEPLOY, SMALL, FW, 1)
    assert not invalid
    assert int(new.ready[2, FW, SMALL]) == 1 and int(new.pending.sum()) == 0


def test_deploy_on_full_cluster_fails(sim, ml, make_state):
    # cluster 0: 9 ready + 1 starting = 10 = max_pods (starting pods count)
    state = make_state(
        ml,
        ready={(0, FW, SMALL): 9},
        pending={(0, ENC, MEDIUM, 1): 1},
        routes={(0, FW): inst(0, SMALL)},
    )
    new, invalid = _apply(sim, ml, state, 0, OP_DEPLOY, LARGE, ENC, 2)
    assert invalid
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    # the same deploy on cluster 1 succeeds and routes proxy 2's encrypt hop there
    new, invalid = _apply(sim, ml, state, 1, OP_DEPLOY, LARGE, ENC, 2)
    assert not invalid
    assert int(new.pending[1, ENC, LARGE].sum()) == 1
    assert int(new.routes[2, ENC]) == inst(1, LARGE)


def test_deploy_outside_the_chain_fails(sim, ml, make_state):
    _, invalid = _apply(sim, ml, make_state(ml), 0, OP_DEPLOY, SMALL, DEC, 0)  # decrypt: not in ML
    assert invalid


def test_remove_takes_pending_pods_first(sim, ml, make_state):
    # large encrypt on cluster 2: 1 ready, 2 starting (ready in 2 and 3 steps)
    state = make_state(
        ml,
        ready={(2, ENC, LARGE): 1},
        pending={(2, ENC, LARGE, 1): 1, (2, ENC, LARGE, 2): 1},
        routes={(0, ENC): inst(2, LARGE)},
    )
    state, invalid = _apply(sim, ml, state, 2, OP_REMOVE, LARGE, ENC, 0)
    assert not invalid
    assert int(state.ready[2, ENC, LARGE]) == 1
    assert np.asarray(state.pending[2, ENC, LARGE]).tolist() == [0, 1, 0]  # the latest first
    state, invalid = _apply(sim, ml, state, 2, OP_REMOVE, LARGE, ENC, 0)
    assert not invalid
    assert int(state.ready[2, ENC, LARGE]) == 1 and int(state.pending.sum()) == 0
    assert int(state.routes[0, ENC]) == inst(2, LARGE)  # still one replica: route kept
    state, invalid = _apply(sim, ml, state, 2, OP_REMOVE, LARGE, ENC, 0)
    assert not invalid
    assert int(state.ready[2, ENC, LARGE]) == 0
    assert int(state.routes[0, ENC]) == -1  # the last encrypt instance is gone: hop broken
    _, invalid = _apply(sim, ml, state, 2, OP_REMOVE, LARGE, ENC, 0)
    assert invalid  # nothing left to remove


def test_remove_last_replica_reroutes_then_breaks(sim, ml, make_state):
    state = make_state(
        ml,
        ready={(0, FW, MEDIUM): 1, (2, FW, SMALL): 1, (0, ENC, MEDIUM): 1},
        routes={
            (0, FW): inst(0, MEDIUM),
            (1, FW): inst(0, MEDIUM),
            (2, FW): inst(2, SMALL),
            (0, ENC): inst(0, MEDIUM),
            (1, ENC): inst(0, MEDIUM),
            (2, ENC): inst(0, MEDIUM),
        },
        backlog={(0, FW, MEDIUM): 12.0},
    )
    for seed in range(3):  # whatever the random draw, the only remaining instance is chosen
        new, invalid = _apply(
            sim, ml, state, 0, OP_REMOVE, MEDIUM, FW, 1, key=jax.random.PRNGKey(seed)
        )
        assert not invalid
        assert int(new.ready[0, FW, MEDIUM]) == 0
        # proxies 0 and 1 re-routed to firewall (2, small) = instance 6; proxy 2 was there
        np.testing.assert_array_equal(new.routes[:, FW], [6, 6, 6])
        np.testing.assert_array_equal(new.routes[:, ENC], [1, 1, 1])  # other hops untouched
        assert float(new.backlog[0, FW, MEDIUM]) == 0.0  # the instance's queue went with it
    new, invalid = _apply(sim, ml, new, 2, OP_REMOVE, SMALL, FW, 0)
    assert not invalid
    np.testing.assert_array_equal(new.routes[:, FW], [-1, -1, -1])  # no firewall left
    np.testing.assert_array_equal(new.routes[:, ENC], [1, 1, 1])


def test_remove_reroutes_only_to_remaining_instances(sim, ml, make_state):
    # three firewall instances; removing (1, medium) sends its proxies to (0, small) or (2, large)
    state = make_state(
        ml,
        ready={(0, FW, SMALL): 1, (1, FW, MEDIUM): 1, (2, FW, LARGE): 2},
        routes={(p, FW): inst(1, MEDIUM) for p in range(3)},
    )
    seen = set()
    for seed in range(12):
        new, invalid = _apply(
            sim, ml, state, 1, OP_REMOVE, MEDIUM, FW, 0, key=jax.random.PRNGKey(seed)
        )
        assert not invalid
        hops = np.asarray(new.routes[:, FW]).tolist()
        assert set(hops) <= {inst(0, SMALL), inst(2, LARGE)}
        seen.update(hops)
    assert seen == {0, 8}  # both remaining instances get picked


def test_assign(sim, ml, make_state):
    state = make_state(
        ml,
        ready={(0, FW, MEDIUM): 1, (2, FW, LARGE): 1},
        routes={(p, FW): inst(0, MEDIUM) for p in range(3)},
    )
    new, invalid = _apply(sim, ml, state, 1, OP_ASSIGN, MEDIUM, FW, 2)  # no firewall (1, medium)
    assert invalid
    np.testing.assert_array_equal(new.routes, state.routes)
    new, invalid = _apply(sim, ml, state, 2, OP_ASSIGN, SMALL, FW, 2)  # (2, small) does not exist
    assert invalid
    new, invalid = _apply(sim, ml, state, 2, OP_ASSIGN, LARGE, FW, 2)
    assert not invalid
    np.testing.assert_array_equal(new.routes[:, FW], [1, 1, 8])
    np.testing.assert_array_equal(new.ready, state.ready)  # assign moves no pods
