"""The functional env: masks agree with `step`, start placements, determinism, vmap == loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.domain.encoders import continuous, onehot
from hmk8s.domain.settings import params_from_usecase
from hmk8s.domain.usecases import load_usecase
from hmk8s.sim.env import ClusterEnv

pytestmark = pytest.mark.usefixtures("fast_compile")

ENC, DEC, FW = 0, 1, 2
MEDIUM = 1


def _flat_states(records, count=None):
    """[envs, steps, ...] -> [envs * steps, ...] (optionally the first `count` envs only)."""
    records = {k: v for k, v in records.items() if k != "start"}
    tree = records if count is None else jax.tree.map(lambda x: x[:count], records)
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


@pytest.mark.parametrize("name", ["ehr", "ml", "stream"])
def test_mask_agrees_with_step(random_trajectories, name):
    params, _, _, records = random_trajectories(name)
    flat = _flat_states(records)  # 16 episodes x 8 steps = 128 states
    states, masks = flat["state"], np.asarray(flat["obs"].action_mask)
    env = ClusterEnv()
    num_actions = params.layout.num_actions

    def all_actions(key, state):
        def one(action):
            _, nxt, _, _, _, info = env.step_env(key, state, action, params)
            return info["invalid"], nxt.ready, nxt.pending, nxt.routes

        return jax.vmap(one)(jnp.arange(num_actions))

    keys = jax.random.split(jax.random.PRNGKey(5), masks.shape[0])
    invalid, *placement = jax.jit(jax.vmap(all_actions))(keys, states)
    invalid = np.asarray(invalid)

    # the states are varied: refused actions occur, and more than the no-op is allowed
    assert (masks.sum(axis=1) > 1).any() and (~masks).any()
    assert masks[:, params.layout.noop_index].all()
    np.testing.assert_array_equal(masks, ~invalid)
    # a refused action changes nothing: the placement is the no-op's (same key, same state)
    noop = params.layout.noop_index
    for leaf in placement:
        leaf = np.asarray(leaf)
        same = (leaf == leaf[:, noop : noop + 1]).reshape(*invalid.shape, -1).all(axis=-1)
        assert same[invalid].all()


@pytest.mark.parametrize("name", ["ehr", "stream"])
def test_random_start_is_a_valid_placement(random_trajectories, name):
    params, _, _, records = random_trajectories(name)
    chain = list(params.chain)
    ready, routes = np.asarray(records["start"].ready), np.asarray(records["start"].routes)
    for b in range(ready.shape[0]):
        per_fn = ready[b].sum(axis=(0, 2))
        assert ((per_fn[chain] >= 1) & (per_fn[chain] <= 3)).all()  # 1-2 pods (+1 elsewhere)
        assert (np.delete(per_fn, chain) == 0).all()
        assert (ready[b].sum(axis=(1, 2)) <= 10).all()
        for p in range(params.layout.proxies):
            for f in chain:
                k, c = divmod(int(routes[b, p, f]), 3)
                assert routes[b, p, f] >= 0 and ready[b, k, f, c] > 0  # routed to a live one


def test_random_trajectories_include_invalid_actions(random_trajectories):
    _, _, _, records = random_trajectories("ml")
    invalid = np.asarray(records["invalid"])
    assert invalid.any() and not invalid.all()


@pytest.mark.parametrize("encoder", [onehot, continuous])
def test_encoders_on_random_states(random_trajectories, encoder):
    params, _, _, records = random_trajectories("stream")
    obs = _flat_states(records)["obs"]  # 16 episodes x 8 steps
    x = np.asarray(jax.jit(jax.vmap(lambda o: encoder(o, params)))(obs))
    assert x.shape == (128, 70 if encoder is onehot else 203)
    assert np.all((x >= 0.0) & (x <= 1.0))
    if encoder is onehot:
        # one hot bit per block: 3 CPU + 3 placement + 3 pod + 1 latency = 10
        np.testing.assert_array_equal(x.sum(axis=1), 10.0)


def test_reset_empty_and_minimal(jitted, quiet_params):
    empty = quiet_params("ml")
    obs, state = jitted.reset(jax.random.PRNGKey(0), empty)
    assert int(state.ready.sum()) == 0 and int(state.pending.sum()) == 0
    assert (np.asarray(state.routes) == -1).all()
    assert int(state.time) == 0
    # every chain hop broken: every latency is the timeout, 1 s / 60 ms = 16.67
    np.testing.assert_allclose(obs.latency_ratio, 1.0 / 0.06, rtol=1e-5)

    minimal = params_from_usecase(load_usecase("ml"), {"start": "minimal"})
    _, state = jitted.reset(jax.random.PRNGKey(0), minimal)
    # one ready medium pod of firewall and of encrypt on proxy 0's home (cluster 0)
    expected = np.zeros((3, 3, 3), int)
    expected[0, FW, MEDIUM] = expected[0, ENC, MEDIUM] = 1
    np.testing.assert_array_equal(state.ready, expected)
    # every proxy routes both hops to instance 0 * 3 + medium = 1; decrypt unused: -1
    np.testing.assert_array_equal(state.routes, [[1, -1, 1]] * 3)


def test_broken_chain_counts_as_the_timeout_under_measurement_noise(jitted):
    params = params_from_usecase(load_usecase("ml"))  # measurement_noise 0.05 as shipped
    obs, _ = jitted.reset(jax.random.PRNGKey(0), params)  # empty start: every chain broken
    # each proxy's latency = timeout 1 s -> ratio 1 / 0.06 = 16.667 for every proxy
    np.testing.assert_allclose(obs.latency_ratio, [1.0 / 0.06] * 3, rtol=1e-5)


def test_step_refuses_minus_one_without_a_noop(jitted, quiet_params, make_state):
    params = quiet_params("ml", {"noop": False})
    state = make_state(params)  # no pods
    _, nxt, _, _, _, info = jitted.step_env(jax.random.PRNGKey(1), state, jnp.int32(-1), params)
    # expected: refused, nothing deployed
    assert bool(info["invalid"])
    assert int(nxt.replicas.sum()) == 0


def test_same_key_same_trajectory_different_key_different_rates(random_trajectories):
    _, _, run, _ = random_trajectories("ml")
    a = run(jax.random.PRNGKey(7))
    b = run(jax.random.PRNGKey(7))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    c = run(jax.random.PRNGKey(8))
    assert not np.allclose(a["obs"].rates, c["obs"].rates)


def test_vmap_over_1024_envs_matches_a_python_loop(random_trajectories):
    _, episode, run, _ = random_trajectories("ml")
    keys = jax.random.split(jax.random.PRNGKey(99), 1024)
    batched = jax.jit(jax.vmap(episode))(keys)
    assert batched["reward"].shape == (1024, 8)
    for i in [0, 1, 2, 3, 64, 127, 128, 255, 256, 500, 511, 512, 700, 1000, 1022, 1023]:
        single = run(keys[i])
        one = jax.tree.map(lambda x, i=i: x[i], batched)
        for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(one), strict=True):
            if np.issubdtype(np.asarray(x).dtype, np.floating):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(x, y)
    # the envs differ from each other
    assert len({float(r) for r in batched["obs"].rates[:, 0, 0]}) > 1000


def test_step_resets_a_truncated_episode(quiet_params, make_state):
    params = quiet_params("ml", wave=False)  # episode_steps 120, empty start
    ready = {(0, FW, MEDIUM): 2, (0, ENC, MEDIUM): 2}
    routes = {(p, f): 0 * 3 + MEDIUM for p in range(3) for f in (FW, ENC)}
    step = jax.jit(ClusterEnv().step)
    # step 119 -> 120: the episode ends (truncated) and the returned state is a fresh episode
    last = make_state(params, ready=ready, routes=routes, time=119)
    obs, state, reward, terminated, truncated, _ = step(jax.random.PRNGKey(0), last, 243, params)
    assert bool(truncated) and not bool(terminated)
    assert int(state.time) == 0 and int(state.replicas.sum()) == 0  # the empty start again
    assert int(obs.pods.sum()) == 0
    # the reward is the last step's (rates 50, 40, 30 req/s, all through cluster 0):
    #   firewall: 2 pods * mu 120 for 120/s, rho 0.5 -> hop (1 + 1)/120 = 0.0166667 s
    #   encrypt: 2 pods * mu 80 for 120/s, rho 0.75 -> hop (1 + 3)/80 = 0.05 s
    #   network home -> 0 -> 0 -> home: 0, 8 + 8 = 16, 20 + 20 = 40 ms
    #   ratios (/ 60 ms): 0.0666667 -> 1.111111, 0.0826667 -> 1.377778, 0.1066667 -> 1.777778
    #   L = (50*1.111111 + 40*1.377778 + 30*1.777778) / 120 = 164 / 120 = 1.366667
    #   R = 0.3*(1 - 4/30) + 0.7*(1 - 2*0.366667) = 0.26 + 0.186667 = 0.446667
    assert float(reward) == pytest.approx(0.26 + 0.7 * (1 - 2 * (164 / 120 - 1)), abs=1e-5)
    # one step earlier nothing is reset
    _, state, _, _, truncated, _ = step(jax.random.PRNGKey(0), last.replace(time=118), 243, params)
    assert not bool(truncated) and int(state.time) == 119 and int(state.replicas.sum()) == 4


def test_time_advances(random_trajectories):
    params, _, _, records = random_trajectories("ml")
    # 8 steps from reset: time 1..8 after each step; the episode (120 steps) is not over
    np.testing.assert_array_equal(records["state"].time[0], np.arange(1, 9))
    assert int(records["start"].time[0]) == 0
    assert params.episode_steps == 120
