"""Prioritised replay against numbers worked out by hand, and uniform replay left as it was."""

from __future__ import annotations

import dataclasses

import flashbax as fbx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.agents import dqn
from hmk8s.agents.config import AgentConfig
from hmk8s.agents.parts import make_agent_parts
from hmk8s.agents.replay import (
    Transition,
    example_transition,
    importance_weights,
    make_buffer,
    new_priorities,
    priority_state,
)
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.sim import make
from hmk8s.train.anakin.loop import init_seeds, make_chunk_fn, make_trainer

pytestmark = pytest.mark.usefixtures("fast_compile")

# Q(s) = s @ diag(1, 2) + [0.5, -0.5]: a QNetwork with no hidden layer, weights set by hand.
PARAMS = {
    "params": {
        "Dense_0": {"kernel": jnp.array([[1.0, 0.0], [0.0, 2.0]]), "bias": jnp.array([0.5, -0.5])}
    }
}
# Three transitions, gamma 0.9, double DQN with target = online weights:
# 0: s = [1, 1], Q = [1.5, 1.5], a = 0; s' = [0, 0], Q' = [0.5, -0.5] -> y = 1 + 0.9 * 0.5
#    = 1.45, TD error -0.05, Huber 0.5 * 0.05^2 = 0.00125.
# 1: s = [2, 0], Q = [2.5, -0.5], a = 1, r = 3, terminated -> TD error 3.5, Huber 3.0.
# 2: s = [0, 1], Q = [0.5, 1.5], a = 1, r = 0, terminated -> TD error -1.5, Huber 1.0.
ITEMS = Transition(
    obs=jnp.array([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0]]),
    action=jnp.array([0, 1, 1], jnp.int32),
    reward=jnp.array([1.0, 3.0, 0.0]),
    terminated=jnp.array([False, True, True]),
    next_obs=jnp.zeros((3, 2)),
    next_mask=jnp.ones((3, 2), bool),
    next_hint=jnp.full((3,), -1, jnp.int32),
)
TINY = AgentConfig(
    hidden=[],
    lr_decay_updates=0,
    batch_size=4,
    buffer_size=4,
    gamma=0.9,
    learning_starts=0,
    priority_exponent=0.5,
    priority_beta=0.5,
    priority_epsilon=0.01,
)


def leaves(replay) -> np.ndarray:
    tree = priority_state(replay)
    return np.asarray(tree.nodes[-(2**tree.tree_depth) :])


def test_importance_weights_and_new_priorities_by_hand():
    p = jnp.array([0.1, 0.2, 0.4, 0.0])
    # (N p)^-0.5 over the largest, (N p = 1) -> 1, 2^-0.5, 4^-0.5; the p = 0 draw weighs 0
    np.testing.assert_allclose(importance_weights(p, 0.5), [1.0, 0.70710678, 0.5, 0.0], 1e-6)
    np.testing.assert_allclose(importance_weights(p, 0.0), [1.0, 1.0, 1.0, 0.0])
    td = jnp.array([-0.05, 3.5, 0.0, 2.0])
    np.testing.assert_allclose(new_priorities(td, p, 0.01), [0.06, 3.51, 0.01, 0.0], 1e-6)


def test_new_items_get_the_largest_priority_recorded():
    buffer = make_buffer(4, 1, 2, priority_exponent=0.5)
    add, set_priorities = jax.jit(buffer.add), jax.jit(buffer.set_priorities)
    replay = buffer.init(example_transition(jnp.zeros(2), 2))
    replay = add(replay, jax.tree.map(lambda x: x[:2], ITEMS))
    np.testing.assert_array_equal(leaves(replay), [1.0, 1.0, 0.0, 0.0])  # 1 before any update
    replay = set_priorities(replay, jnp.array([0, 1]), jnp.array([6.25, 1.0]))
    np.testing.assert_allclose(leaves(replay), [2.5, 1.0, 0.0, 0.0])  # p^alpha = 6.25^0.5
    replay = add(replay, jax.tree.map(lambda x: x[:1], ITEMS))
    np.testing.assert_allclose(leaves(replay), [2.5, 1.0, 2.5, 0.0])  # not its floor, 2
    replay = add(replay, jax.tree.map(lambda x: x[:2], ITEMS))  # wraps onto item 0
    np.testing.assert_allclose(leaves(replay), [2.5, 1.0, 2.5, 2.5])
    assert float(priority_state(replay).nodes[0]) == pytest.approx(8.5)  # the root: their sum


def test_one_prioritised_update_by_hand():
    parts = make_agent_parts(TINY, 2)
    replay = parts.buffer.init(example_transition(jnp.zeros(2), 2))
    replay = jax.jit(parts.buffer.add)(replay, ITEMS)
    # raw priorities 6.25, 1.5625, 1.5625 -> p^0.5 = 2.5, 1.25, 1.25 of 5: P = 1/2, 1/4, 1/4.
    # Four strata of the total 5: [0, 1.25) and [1.25, 2.5) fall on item 0, [2.5, 3.75) on
    # item 1, [3.75, 5) on item 2, whatever the key.
    replay = jax.jit(parts.buffer.set_priorities)(
        replay, jnp.arange(3), jnp.array([6.25, 1.5625, 1.5625])
    )
    key = jax.random.PRNGKey(3)
    drawn = jax.jit(parts.buffer.sample)(replay, key).indices
    np.testing.assert_array_equal(drawn, [0, 0, 1, 2])
    learner = dqn.LearnerState(PARAMS, PARAMS, parts.optimizer.init(PARAMS), jnp.int32(0))
    _, after, loss = jax.jit(parts.learn)(learner, replay, key, 0.0)
    # weights (P_min / P)^0.5: item 0 (twice) (1/4 / 1/2)^0.5 = 0.70711, items 1 and 2: 1
    w0 = 0.5**0.5
    assert float(loss) == pytest.approx((2 * w0 * 0.00125 + 3.0 + 1.0) / 4, rel=1e-6)
    # priorities |TD error| + 0.01, stored as their square roots; the empty slot stays 0
    expected = [0.06**0.5, 3.51**0.5, 1.51**0.5, 0.0]
    np.testing.assert_allclose(leaves(after), expected, rtol=1e-5)
    assert float(priority_state(after).nodes[0]) == pytest.approx(sum(expected), rel=1e-5)


def test_alpha_zero_is_the_uniform_buffer_and_the_plain_update():
    uniform = dataclasses.replace(TINY, priority_exponent=0.0)
    parts = make_agent_parts(uniform, 2)
    replay = parts.buffer.init(example_transition(jnp.zeros(2), 2))
    replay = jax.jit(parts.buffer.add)(replay, ITEMS)
    assert priority_state(replay) is None  # no sum tree
    learner = dqn.LearnerState(PARAMS, PARAMS, parts.optimizer.init(PARAMS), jnp.int32(0))
    key = jax.random.PRNGKey(3)
    got, after, loss = jax.jit(parts.learn)(learner, replay, key, 0.0)
    assert jax.tree.structure(after) == jax.tree.structure(replay)  # still no sum tree
    item_buffer = fbx.make_item_buffer(4, 1, 4, add_sequences=False, add_batches=True)
    batch = jax.jit(item_buffer.sample)(replay, key).experience
    want, info = jax.jit(parts.update)(learner, batch, 0.0)  # the unweighted mean
    assert float(loss) == float(info.loss)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_short_prioritised_run_on_the_sim_learns_and_keeps_its_sum_tree():
    env, params = make("ml", {"episode_steps": 20})
    agent = AgentConfig(
        hidden=[32],
        lr_decay_updates=0,
        batch_size=32,
        buffer_size=512,
        learning_starts=256,
        updates_per_step=0.125,
        priority_exponent=0.6,
        priority_beta=0.4,
    )
    trainer = make_trainer(sim_env_spec(env, params, "continuous"), agent, num_envs=16)
    state, metrics = make_chunk_fn(trainer, 48)(init_seeds(trainer, 0, 2))  # 768 steps
    assert np.asarray(metrics["env_steps"]).tolist() == [768, 768]
    # 2 per iteration from the one that reaches 256 steps on: 33 iterations
    assert np.asarray(metrics["updates"]).tolist() == [66, 66]
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    tree = state.buffer.sum_tree_state
    stored = np.asarray(tree.nodes)[:, -(2**tree.tree_depth) :]  # [seed, leaf]
    assert stored.shape == (2, 512)
    assert (stored > 0).all()  # every slot written (768 > 512) and none at priority 0
    # reprioritised items hold (|TD error| + eps)^0.6, the others the largest recorded
    for seed in range(2):
        top = float(tree.max_recorded_priority[seed])
        assert 1.0 <= top == pytest.approx(stored[seed].max())
        assert 50 < (stored[seed] < top).sum() < 512
    np.testing.assert_allclose(np.asarray(tree.nodes)[:, 0], stored.sum(axis=1), rtol=1e-4)
