"""PQN: lambda-returns worked out by hand, the regression step, CartPole solved, its config."""

from __future__ import annotations

import dataclasses
import math
import re

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hmk8s.agents.config import AgentConfig, PqnConfig, ScheduleConfig, planned_updates
from hmk8s.agents.dqn import LearnerState
from hmk8s.agents.network import QNetwork
from hmk8s.agents.pqn import lambda_returns, make_regression_step, next_values
from hmk8s.envs.gymnax_spec import gymnax_env_spec
from hmk8s.evaluate.stats import iqm
from hmk8s.train.anakin.loop import greedy_returns, init_seeds, make_chunk_fn, make_trainer
from hmk8s.train.config import ConfigError, TrainConfig, resolve

GAMMA, LAMBDA = 0.5, 0.5
REWARD = jnp.array([1.0, 2.0, 3.0])
NEXT_VALUE = jnp.array([10.0, 20.0, 30.0])
NO = jnp.zeros(3, bool)


def returns(terminated=NO, done=NO, td_lambda=LAMBDA):
    return np.asarray(lambda_returns(REWARD, terminated, done, NEXT_VALUE, GAMMA, td_lambda))


def test_lambda_returns_by_hand():
    # G2 = 3 + .5 * 30 = 18 (the rollout's last step bootstraps on its successor's value)
    # G1 = 2 + .5 * (.5 * 20 + .5 * 18) = 11.5;  G0 = 1 + .5 * (.5 * 10 + .5 * 11.5) = 6.375
    np.testing.assert_allclose(returns(), [6.375, 11.5, 18.0])


def test_a_truncated_episode_bootstraps_and_cuts_the_lambda_chain():
    # step 1 ends its episode by truncation: G1 = 2 + .5 * 20 = 12, G0 = 1 + .5 * (5 + 6) = 6.5
    cut = jnp.array([False, True, False])
    np.testing.assert_allclose(returns(done=cut), [6.5, 12.0, 18.0])


def test_a_terminated_episode_does_not_bootstrap():
    # step 1 terminates: G1 = 2, G0 = 1 + .5 * (.5 * 10 + .5 * 2) = 4
    end = jnp.array([False, True, False])
    np.testing.assert_allclose(returns(terminated=end, done=end), [4.0, 2.0, 18.0])


def test_lambda_zero_is_the_one_step_target_and_one_the_discounted_sum():
    np.testing.assert_allclose(returns(td_lambda=0.0), [1 + 5, 2 + 10, 3 + 15])
    # G0 = 1 + .5 * 2 + .25 * 3 + .125 * 30 = 6.5, G1 = 2 + .5 * 3 + .25 * 30 = 11
    np.testing.assert_allclose(returns(td_lambda=1.0), [6.5, 11.0, 18.0])


def test_next_values_follow_the_masked_and_heuristic_choice():
    q = jnp.array([[1.0, 5.0, 3.0]])
    hint = jnp.array([2])
    assert float(next_values(q, jnp.array([[True, True, True]]), hint, 0.0)[0]) == 5.0
    assert float(next_values(q, jnp.array([[True, False, True]]), hint, 0.0)[0]) == 3.0
    # a bonus of 2.5 makes the hinted action win; its value is read without the bonus
    assert float(next_values(q, jnp.array([[True, True, True]]), hint, 2.5)[0]) == 3.0


def test_the_regression_step_reports_the_loss_and_fits_the_returns():
    net = QNetwork(hidden=(), num_actions=2)
    obs = jnp.eye(3)
    action = jnp.array([0, 1, 1])
    target = jnp.array([1.0, -2.0, 4.0])
    params = jax.tree.map(jnp.zeros_like, net.init(jax.random.PRNGKey(0), obs[0]))
    optimizer = optax.sgd(0.5)
    step = jax.jit(make_regression_step(net.apply, optimizer))
    learner = LearnerState(params, None, optimizer.init(params), jnp.zeros((), jnp.int32))
    learner, loss = step(learner, obs, action, target)
    # Q = 0 everywhere: loss = .5 * mean(1 + 4 + 16) = 3.5
    assert float(loss) == pytest.approx(3.5)
    assert learner.target_params is None and int(learner.updates) == 1
    for _ in range(200):
        learner, loss = step(learner, obs, action, target)
    q = net.apply(learner.params, obs)
    np.testing.assert_allclose(np.asarray(q[jnp.arange(3), action]), target, atol=1e-4)


def test_pqn_solves_cartpole():
    """The IQM over 8 seeds of the mean greedy return is >= 400 (of 500) after 500k env steps.

    The learning rate stays constant: decayed linearly to 0 it froze some seeds on a greedy
    policy that falls near 200, and which seeds depended on the CPU's floating-point rounding
    (seed 1 gave 500 on one CPU and 195 on another). With a constant rate all 8 seeds ended at
    477-500 on that second CPU. The interquartile mean of 8 seeds (the middle 4) is a property of
    the agent, not of one seed's luck: it holds with two collapsed seeds and fails when the agent
    does not learn.
    """
    spec = gymnax_env_spec(*gymnax.make("CartPole-v1"))
    pqn = PqnConfig(td_lambda=0.95, rollout_steps=64, epochs=4, minibatches=8)
    iters = math.ceil(500_000 / (32 * pqn.rollout_steps))
    agent = AgentConfig(
        kind="pqn",
        hidden=[128, 128],
        layer_norm=True,
        learning_rate=5e-4,
        lr_decay_updates=0,
        epsilon=ScheduleConfig("linear", 1.0, 0.05, 100_000),
        pqn=pqn,
    )
    trainer = make_trainer(spec, agent, num_envs=32)
    assert trainer.env_steps_per_iter == 2048 and trainer.updates_per_iter == 32
    seeds = 8
    state, metrics = make_chunk_fn(trainer, iters)(init_seeds(trainer, 0, seeds))
    assert state.buffer is None and state.learner.target_params is None
    assert int(metrics["updates"][0]) == iters * 32 == planned_updates(agent, 32, 500_000)
    got, ended = greedy_returns(
        spec, trainer.network.apply, state.learner.params, jax.random.PRNGKey(123), 32, 600
    )
    assert bool(ended.all())
    means = np.asarray(got).mean(axis=1)
    assert iqm(means) >= 400.0, means


def pqn_config(**pqn) -> TrainConfig:
    agent = AgentConfig(kind="pqn", layer_norm=True, pqn=PqnConfig(**pqn))
    return TrainConfig(agent=agent, total_steps=200_000, num_envs=64)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"td_lambda": 1.5}, "agent.pqn.td_lambda must be in [0, 1]"),
        ({"epochs": 0}, "agent.pqn.epochs must be > 0"),
        ({"minibatches": 3}, "agent.pqn.minibatches=3 must divide the rollout's 2048"),
    ],
)
def test_bad_pqn_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(pqn_config(**changes))


def test_an_unknown_agent_kind_is_refused():
    cfg = TrainConfig(agent=dataclasses.replace(AgentConfig(), kind="ppo"))
    with pytest.raises(ConfigError, match=r"agent\.kind must be one of"):
        resolve(cfg)


def test_pqn_plans_its_updates_per_rollout():
    cfg = pqn_config()
    # ceil(200,000 / (32 x 64)) = 98 rollouts of 4 epochs x 8 minibatches
    assert planned_updates(cfg.agent, 64, 200_000) == 98 * 32
    resolve(dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, lr_decay_updates=0)))
