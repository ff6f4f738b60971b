"""DQN / HAQL pieces against numbers worked out by hand in each test."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.agents import dqn
from hmk8s.agents.network import QNetwork
from hmk8s.agents.replay import Transition

# Two next states, three actions. Row 0: action 1 invalid; row 1: all valid, terminated.
Q_ONLINE = jnp.array([[1.0, 3.0, 2.0], [5.0, 0.0, 4.0]])
Q_TARGET = jnp.array([[30.0, 20.0, 10.0], [40.0, 50.0, 60.0]])
MASK = jnp.array([[True, False, True], [True, True, True]])
REWARD = jnp.array([1.0, 2.0])
TERMINATED = jnp.array([False, True])
GAMMA = 0.5


def target(hint, bonus, double=True):
    fn = jax.jit(dqn.td_target, static_argnames=("gamma", "double"))
    return np.asarray(
        fn(REWARD, TERMINATED, Q_ONLINE, Q_TARGET, MASK, jnp.asarray(hint), GAMMA, bonus, double)
    )


def test_double_dqn_target_by_hand():
    # row 0: online over valid {0, 2} is [1, 2] -> a* = 2, read target 10: 1 + 0.5 * 10 = 6.
    # row 1: terminated -> no bootstrap: 2.
    np.testing.assert_allclose(target([-1, -1], 0.0), [6.0, 2.0])


def test_vanilla_dqn_target_by_hand():
    # without double, the target network picks over valid {0, 2}: max(30, 10) = 30 -> 16.
    np.testing.assert_allclose(target([-1, -1], 0.0, double=False), [16.0, 2.0])


def test_haql_target_follows_the_hint():
    # bonus 1.5 on hinted action 0: [2.5, -, 2] -> a* = 0, target 30 -> 1 + 15 = 16.
    np.testing.assert_allclose(target([0, 0], 1.5), [16.0, 2.0])
    # a bonus too small to flip the choice: [1.5, -, 2] -> a* = 2 -> 6.
    np.testing.assert_allclose(target([0, 0], 0.5), [6.0, 2.0])
    # a hint on a masked action never wins: action 1 is invalid in row 0.
    np.testing.assert_allclose(target([1, 1], 100.0), [6.0, 2.0])


def test_truncation_bootstraps():
    # the same transitions, nothing terminated: row 1 bootstraps from a* = 0 (online 5 + bonus
    # 0 > 4), target value 40 -> 2 + 0.5 * 40 = 22.
    fn = jax.jit(dqn.td_target, static_argnames=("gamma", "double"))
    out = fn(REWARD, jnp.array([False, False]), Q_ONLINE, Q_TARGET, MASK, jnp.array([-1, -1]),
             GAMMA, 0.0, True)  # fmt: skip
    np.testing.assert_allclose(np.asarray(out), [6.0, 22.0])


def linear_q():
    """Q(s) = s @ W + b with W, b set by hand (a QNetwork with no hidden layer)."""
    net = QNetwork(hidden=(), num_actions=2)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros(2))
    kernel = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    params = {"params": {"Dense_0": {"kernel": kernel, "bias": jnp.array([0.5, -0.5])}}}
    return net, params


def test_huber_loss_of_a_linear_q_by_hand():
    net, params = linear_q()
    # s0 = [1, 1]: Q = [1.5, 1.5]; took a = 0. s0' = [0, 0]: Q' = [0.5, -0.5] for both nets.
    # double: argmax online' = 0 -> 0.5; y0 = 1 + 0.9 * 0.5 = 1.45; error 1.5 - 1.45 = 0.05
    # -> huber 0.5 * 0.05^2 = 0.00125.
    # s1 = [2, 0]: Q = [2.5, -0.5]; took a = 1 -> -0.5. terminated, r = 3 -> y1 = 3;
    # error -3.5 -> huber (delta 1) = 0.5 + (3.5 - 1) = 3.0.
    batch = Transition(
        obs=jnp.array([[1.0, 1.0], [2.0, 0.0]]),
        action=jnp.array([0, 1]),
        reward=jnp.array([1.0, 3.0]),
        terminated=jnp.array([False, True]),
        next_obs=jnp.zeros((2, 2)),
        next_mask=jnp.ones((2, 2), bool),
        next_hint=jnp.array([-1, -1]),
    )
    loss_fn = jax.jit(dqn.q_loss, static_argnums=(3, 4, 6, 7))
    loss, td_error = loss_fn(params, params, batch, net.apply, 0.9, 0.0, True, 1.0)
    assert float(loss) == pytest.approx((0.00125 + 3.0) / 2, rel=1e-6)
    np.testing.assert_allclose(np.asarray(td_error), [-0.05, 3.5], rtol=1e-5)
    # importance weights 0.5 and 1 weight each item's loss in the mean
    weighted, _ = loss_fn(
        params, params, batch, net.apply, 0.9, 0.0, True, 1.0, jnp.array([0.5, 1.0])
    )
    assert float(weighted) == pytest.approx((0.5 * 0.00125 + 3.0) / 2, rel=1e-6)


def test_update_copies_target_every_period_and_moves_q_towards_target():
    net, params = linear_q()
    opt = dqn.make_optimizer(0.01, 10.0)
    update = jax.jit(dqn.make_update(net.apply, opt, 0.0, True, 1.0, 3, 1.0))
    batch = Transition(
        obs=jnp.array([[1.0, 1.0]]),
        action=jnp.array([0]),
        reward=jnp.array([10.0]),
        terminated=jnp.array([True]),
        next_obs=jnp.zeros((1, 2)),
        next_mask=jnp.ones((1, 2), bool),
        next_hint=jnp.array([-1]),
    )
    learner = dqn.LearnerState(params, params, opt.init(params), jnp.zeros((), jnp.int32))
    q_before = float(net.apply(params, batch.obs)[0, 0])
    for n in range(1, 4):
        learner, _ = update(learner, batch, 0.0)
        same = jax.tree.leaves(jax.tree.map(jnp.array_equal, learner.params, learner.target_params))
        assert all(same) == (n == 3), n  # copied at update 3 only
        if n < 3:  # untouched before the copy
            assert jax.tree.all(jax.tree.map(jnp.array_equal, learner.target_params, params))
    # Q(s, 0) = 1.5 < y = 10: Adam's first steps each raise the 3 weights on the path by
    # lr = 0.01 -> Q rises by about 3 steps * 3 weights * 0.01 = 0.09.
    assert float(net.apply(learner.params, batch.obs)[0, 0]) == pytest.approx(q_before + 0.09, 1e-3)


def test_polyak_refresh_by_hand():
    new, old = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}
    out = dqn.refresh_target(new, old, jnp.int32(7), 500, 0.25)
    np.testing.assert_allclose(np.asarray(out["w"]), [2.5, 5.0])  # 0.25 new + 0.75 old


def test_greedy_action_masks_and_adds_the_heuristic():
    q = jnp.array([[1.0, 5.0, 2.0], [1.0, 5.0, 2.0], [1.0, 5.0, 2.0]])
    mask = jnp.array([[True, False, True], [True, True, True], [True, True, True]])
    hint = jnp.array([-1, 2, 0])
    # row 0: 5 is masked -> 2; row 1: [1, 5, 2 + 3.5] -> 2; row 2: [1 + 3.5, 5, 2] -> 1.
    np.testing.assert_array_equal(np.asarray(dqn.greedy_action(q, mask, hint, 3.5)), [2, 2, 1])
    # a larger bonus flips row 2 too: [1 + 4.5, 5, 2] -> 0.
    np.testing.assert_array_equal(np.asarray(dqn.greedy_action(q, mask, hint, 4.5)), [2, 2, 0])


def test_epsilon_greedy_explores_only_valid_actions():
    n = 20_000
    q = jnp.tile(jnp.array([0.0, 9.0, 1.0, 2.0]), (n, 1))
    mask = jnp.tile(jnp.array([True, False, True, True]), (n, 1))
    hint = jnp.full((n,), -1)
    explore = np.asarray(dqn.epsilon_greedy(jax.random.PRNGKey(0), q, mask, hint, 1.0, 0.0))
    counts = np.bincount(explore, minlength=4) / n
    assert counts[1] == 0.0
    np.testing.assert_allclose(counts[[0, 2, 3]], 1 / 3, atol=0.02)
    greedy = np.asarray(dqn.epsilon_greedy(jax.random.PRNGKey(0), q, mask, hint, 0.0, 0.0))
    assert (greedy == 3).all()
    # epsilon 0.4: greedy 3 with prob 0.6 + 0.4/3.
    half = np.asarray(dqn.epsilon_greedy(jax.random.PRNGKey(1), q, mask, hint, 0.4, 0.0))
    assert (half == 3).mean() == pytest.approx(0.6 + 0.4 / 3, abs=0.02)


def test_schedules_by_hand():
    lin = dqn.make_schedule("linear", 1.0, 0.1, 100)
    assert [float(lin(t)) for t in (0, 50, 100, 1000)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    exp = dqn.make_schedule("exponential", 1.0, 0.01, 100)
    # 1.0 * 0.01 ** (t / 100): t = 50 -> 0.1, clipped at 0.01 after 100.
    assert [float(exp(t)) for t in (0, 50, 100, 400)] == pytest.approx([1.0, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError):
        dqn.make_schedule("cosine", 1.0, 0.0, 10)
