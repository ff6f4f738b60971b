"""Encoders: the exact 70-dim one-hot layout on hand-built observations, the continuous one."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.domain.encoders import continuous, get_encoder, onehot, onehot_size
from hmk8s.domain.observation import Observation
from hmk8s.domain.settings import params_from_usecase
from hmk8s.domain.usecases import load_usecase

pytestmark = pytest.mark.usefixtures("fast_compile")

ENC, DEC, FW = 0, 1, 2
SMALL, MEDIUM, LARGE = 0, 1, 2


@pytest.fixture(scope="module")
def ml_params():
    return params_from_usecase(load_usecase("ml"))


def _obs(params, *, cpu, replicas, rates, latency_ratio, routes=None, util=None):
    replicas = jnp.asarray(replicas, jnp.int32)
    lay = params.layout
    if routes is None:
        routes = jnp.full((lay.proxies, lay.functions), -1, jnp.int32)
    if util is None:
        util = jnp.zeros(replicas.shape, jnp.float32)
    return Observation(
        cpu_util=jnp.asarray(cpu, jnp.float32),
        pods=replicas.sum(axis=(1, 2)),
        replicas=replicas,
        ready=replicas,
        instance_util=jnp.asarray(util, jnp.float32),
        routes=jnp.asarray(routes, jnp.int32),
        latency_ratio=jnp.asarray(latency_ratio, jnp.float32),
        rates=jnp.asarray(rates, jnp.float32),
        action_mask=jnp.ones((lay.num_actions,), bool),
    )


def test_onehot_size():
    # 7 CPU bins * K + 2^K placement bins * F + 6 pod bins * K + 7 latency bins
    assert onehot_size(3, 3) == 7 * 3 + 8 * 3 + 6 * 3 + 7 == 70
    assert onehot_size(2, 3) == 7 * 2 + 4 * 3 + 6 * 2 + 7 == 45


def test_onehot_by_hand(ml_params):
    replicas = np.zeros((3, 3, 3), np.int32)
    replicas[0, ENC, SMALL] = 3  # cluster 0: 3 pods
    replicas[1, FW, MEDIUM] = 10  # cluster 1: 10 pods
    replicas[2, ENC, LARGE] = 1  # cluster 2: 1 pod
    obs = _obs(
        ml_params,
        cpu=[0.10, 0.95, 1.70],
        replicas=replicas,
        rates=[10.0, 30.0, 0.0],
        latency_ratio=[0.5, 1.3, 16.0],
    )
    x = np.asarray(onehot(obs, ml_params))
    assert x.shape == (70,)
    hot = {
        # CPU block [0, 21): cluster k, bin b -> 7k + b
        0 + 0,  # cluster 0: 10 % -> bin 0 (0-20)
        7 + 4,  # cluster 1: 95 % -> bin 4 (80-100)
        14 + 6,  # cluster 2: 170 % -> bin 6 (>150)
        # placement block [21, 45): function f, subset code s -> 21 + 8f + s, s = sum_k 2^k
        21 + 0 + 5,  # encrypt on clusters {0, 2}: 1 + 4 = 5
        21 + 8 + 0,  # decrypt nowhere: 0
        21 + 16 + 2,  # firewall on cluster {1}: 2
        # pod block [45, 63): cluster k, bin b -> 45 + 6k + b
        45 + 0 + 2,  # cluster 0: 3 pods -> bin 2 (3-4)
        45 + 6 + 5,  # cluster 1: 10 pods -> bin 5 (9-10)
        45 + 12 + 1,  # cluster 2: 1 pod -> bin 1 (1-2)
        # latency block [63, 70): L = (10*0.5 + 30*1.3 + 0*16) / 40 = 44 / 40 = 1.1 -> bin 5
        63 + 5,
    }
    assert hot == {0, 11, 20, 26, 29, 39, 47, 56, 58, 68}
    assert set(np.flatnonzero(x).tolist()) == hot
    assert x.sum() == 10.0


def test_onehot_bin_edges_by_hand(ml_params):
    replicas = np.zeros((3, 3, 3), np.int32)
    replicas[1, ENC, SMALL] = 1
    replicas[1, DEC, SMALL] = 1  # cluster 1: 2 pods
    replicas[2, :, MEDIUM] = 3  # cluster 2: 9 pods, every function
    obs = _obs(
        ml_params,
        cpu=[0.2, 1.0, 1.5],  # lower edges belong to the upper bin
        replicas=replicas,
        rates=[0.0, 0.0, 0.0],  # no load: proxies weigh equally
        latency_ratio=[0.0, 0.0, 0.9],
    )
    x = np.asarray(onehot(obs, ml_params))
    hot = {
        0 + 1,  # 20 % -> bin 1 (20-40)
        7 + 5,  # 100 % -> bin 5 (100-150)
        14 + 6,  # 150 % -> bin 6 (>150)
        21 + 0 + 6,  # encrypt on {1, 2}: 2 + 4 = 6
        21 + 8 + 6,  # decrypt on {1, 2}: 6
        21 + 16 + 4,  # firewall on {2}: 4
        45 + 0 + 0,  # cluster 0: 0 pods -> bin 0
        45 + 6 + 1,  # cluster 1: 2 pods -> bin 1 (1-2)
        45 + 12 + 5,  # cluster 2: 9 pods -> bin 5 (9-10)
        63 + 1,  # L = (0 + 0 + 0.9) / 3 = 0.3 -> bin 1 (20-40)
    }
    assert hot == {1, 12, 20, 27, 35, 41, 45, 52, 62, 64}
    assert set(np.flatnonzero(x).tolist()) == hot


@pytest.mark.parametrize(
    ("name", "size"),
    [
        # K cpu + K pods + KFC replicas + KFC util + P*len(chain)*(K*C + 1) routes
        # + P latency + P load share + 1 total load
        ("ehr", 3 + 3 + 27 + 27 + 3 * 3 * 10 + 3 + 3 + 27 + 3 + 1),  # 187
        ("ml", 3 + 3 + 27 + 27 + 3 * 2 * 10 + 3 + 3 + 27 + 3 + 1),  # 157
        ("stream", 3 + 3 + 27 + 27 + 5 * 2 * 10 + 5 + 5 + 27 + 5 + 1),  # 203
    ],
)
def test_continuous_size(name, size):
    params = params_from_usecase(load_usecase(name), {"encoder": "continuous"})
    lay = params.layout
    obs = _obs(
        params,
        cpu=[0.0] * 3,
        replicas=np.zeros((3, 3, 3), np.int32),
        rates=[0.0] * lay.proxies,
        latency_ratio=[0.0] * lay.proxies,
    )
    assert continuous(obs, params).shape == (size,)


def test_continuous_values_by_hand(ml_params):
    replicas = np.zeros((3, 3, 3), np.int32)
    replicas[0, FW, MEDIUM] = 4
    replicas[2, ENC, SMALL] = 10
    util = np.zeros((3, 3, 3), np.float32)
    util[0, FW, MEDIUM] = 1.0
    util[2, ENC, SMALL] = 3.0  # over 2 -> clipped to 1
    routes = np.full((3, 3), -1, np.int32)
    routes[0, FW] = 0 * 3 + MEDIUM  # instance 1
    routes[0, ENC] = 2 * 3 + SMALL  # instance 6
    routes[1, FW] = 1  # proxy 1's encrypt hop broken; proxy 2 entirely broken
    obs = _obs(
        ml_params,
        cpu=[0.6, 0.0, 5.0],
        replicas=replicas,
        rates=[30.0, 10.0, 0.0],
        latency_ratio=[0.5, 20.0, 8.0],
        routes=routes,
        util=util,
    )
    x = np.asarray(continuous(obs, ml_params))
    assert x.shape == (157,)
    assert np.all((x >= 0.0) & (x <= 1.0))
    np.testing.assert_allclose(x[0:3], [0.3, 0.0, 1.0], rtol=1e-6)  # cpu / 2, clipped
    np.testing.assert_allclose(x[3:6], [0.4, 0.0, 1.0], rtol=1e-6)  # pods / 10
    reps = x[6:33].reshape(3, 3, 3)
    assert reps[0, FW, MEDIUM] == pytest.approx(0.4) and reps[2, ENC, SMALL] == 1.0
    assert reps.sum() == pytest.approx(1.4)
    utils = x[33:60].reshape(3, 3, 3)
    assert utils[0, FW, MEDIUM] == 0.5 and utils[2, ENC, SMALL] == 1.0
    # routes: proxy-major, chain order (firewall, encrypt), 10 slots, slot 9 = broken
    hops = x[60:120].reshape(3, 2, 10)
    assert np.flatnonzero(hops[0, 0]).tolist() == [1]
    assert np.flatnonzero(hops[0, 1]).tolist() == [6]
    assert np.flatnonzero(hops[1, 0]).tolist() == [1]
    assert np.flatnonzero(hops[1, 1]).tolist() == [9]
    assert np.flatnonzero(hops[2, 0]).tolist() == [9]
    # latency: ratio * sla / timeout = ratio * 0.06, clipped to 1
    np.testing.assert_allclose(x[120:123], [0.03, 1.0, 0.48], rtol=1e-5)
    np.testing.assert_allclose(x[123:126], [0.25, 1.0, 1.0], rtol=1e-6)  # ratio / 2, clipped
    # pressure / 2: firewall (0, medium) takes proxies 0 and 1, 40/s on 4 x 120/s;
    # encrypt (2, small) proxy 0's 30/s on 10 x 40/s; nothing else is routed
    pressure = x[126:153].reshape(3, 3, 3)
    assert pressure[0, FW, MEDIUM] == pytest.approx(40.0 / 480.0 / 2.0, rel=1e-6)
    assert pressure[2, ENC, SMALL] == pytest.approx(30.0 / 400.0 / 2.0, rel=1e-6)
    assert np.count_nonzero(pressure) == 2
    np.testing.assert_allclose(x[153:156], [0.75, 0.25, 0.0], rtol=1e-6)  # load shares
    assert x[156] == pytest.approx(np.log(41.0) / 10.0, rel=1e-6)  # log1p(40) / 10


def test_get_encoder():
    assert get_encoder("onehot") is onehot
    assert get_encoder("continuous") is continuous
    with pytest.raises(ValueError, match="unknown encoder 'pixels'"):
        get_encoder("pixels")
