"""Every policy, baseline or trained agent, meets the very same episodes for the same key."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from hmk8s import sim
from hmk8s.agents.network import QNetwork
from hmk8s.domain.encoders import get_encoder
from hmk8s.domain.settings import ENV_DEFAULTS
from hmk8s.policies.baselines import BASELINES
from hmk8s.policies.q_policy import q_policy
from hmk8s.policies.rollout import make_seed_rollout, rollout

pytestmark = pytest.mark.usefixtures("fast_compile")

EPISODES, STEPS = 3, 8


@pytest.fixture(scope="module")
def setup():
    env, params = sim.make("ml", {"episode_steps": STEPS, "start": "minimal"})
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    net = QNetwork(hidden=(8,), num_actions=params.layout.num_actions)
    x = get_encoder(ENV_DEFAULTS["encoder"])(obs, params)  # what the rollouts encode with
    seeds = jax.vmap(net.init, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(1), 2), x)
    key = jax.random.PRNGKey(7)
    agents = make_seed_rollout(env, params, net.apply, EPISODES)(seeds, key)
    return env, params, net, seeds, key, agents


def test_every_policy_meets_the_same_load(setup):
    env, params, _, _, key, agents = setup
    # random and hpa are the two most unlike baselines (stateless vs a stateful scaler); each
    # rollout compiles anew, so the others would only cost time
    records = {n: rollout(env, params, BASELINES[n](), key, EPISODES) for n in ("random", "hpa")}
    reference = np.asarray(records["random"]["rates"])
    assert reference.shape == (EPISODES, STEPS, 3)
    for name, r in records.items():
        np.testing.assert_array_equal(np.asarray(r["rates"]), reference, err_msg=name)
    # the agents' rollout is compiled separately, so equal up to float rounding
    for seed in range(2):
        np.testing.assert_allclose(np.asarray(agents["rates"][seed]), reference, rtol=1e-6)
    # the policies did act differently, so equal loads are not equal behaviour
    pods = {n: np.asarray(r["pods"]) for n, r in records.items()}
    assert not np.array_equal(pods["random"], pods["hpa"])
    assert not np.array_equal(np.asarray(agents["pods"][0]), pods["random"])
    # and the episodes are not copies of one another
    assert not np.allclose(reference[0], reference[1])


def test_seed_rollout_is_each_seeds_greedy_agent(setup):
    env, params, net, seeds, key, agents = setup
    second = jax.tree.map(lambda x: x[1], seeds)
    alone = rollout(env, params, q_policy(net.apply, second), key, EPISODES)
    np.testing.assert_array_equal(np.asarray(agents["action"][1]), np.asarray(alone["action"]))
    # two differently initialised networks choose differently somewhere
    assert not np.array_equal(np.asarray(agents["action"][0]), np.asarray(agents["action"][1]))
