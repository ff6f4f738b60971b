"""The Anakin loop: it learns CartPole, writes the right transitions, keeps seeds apart."""

from __future__ import annotations

import dataclasses
import math

import gymnax
import jax
import numpy as np
import pytest
from counting import EPISODE, SMALL, counting_env

from hmk8s.agents.config import (
    AgentConfig,
    HaqlConfig,
    ScheduleConfig,
    iteration_shape,
    planned_updates,
)
from hmk8s.envs.gymnax_spec import gymnax_env_spec
from hmk8s.envs.spec import EnvSpec
from hmk8s.train.anakin.loop import (
    greedy_returns,
    init_seeds,
    make_chunk_fn,
    make_trainer,
)
from hmk8s.train.anakin.run import chunk_plan
from hmk8s.train.config import ConfigError, TrainConfig, resolve


@pytest.mark.parametrize("terminal", [True, False])
def test_replay_holds_the_true_successor_and_only_terminations(terminal):
    trainer = make_trainer(counting_env(terminal), SMALL, num_envs=3)
    state, metrics = make_chunk_fn(trainer, 10)(init_seeds(trainer, 0, 1))
    exp = jax.tree.map(lambda x: np.asarray(x)[0, 0, :30], state.buffer.experience)  # 10 * 3
    t = exp.obs[:, 0]
    np.testing.assert_array_equal(exp.next_obs[:, 0], t + 1)  # pre-reset successor, even at t=4
    np.testing.assert_array_equal(exp.terminated, (t + 1 == EPISODE) & terminal)
    np.testing.assert_array_equal(exp.next_mask[:, 1], t + 1 != 1)
    np.testing.assert_array_equal(exp.next_hint, (t + 1) % 2)
    np.testing.assert_array_equal(exp.reward, exp.action)
    assert not exp.action[t == 1].any()  # the masked action is never taken
    np.testing.assert_array_equal(t[:3], [0, 0, 0])
    # 30 steps of 5-step episodes in 3 envs: 6 episodes; return = number of 1-actions
    assert int(metrics["episodes"][0]) == 6
    assert float(metrics["env/pods"][0]) == pytest.approx(np.mean([1, 2, 3, 4, 5]))
    ep_actions = exp.action.reshape(10, 3).T.reshape(3, 2, 5).sum(-1)  # per env, per episode
    assert float(metrics["episode_return"][0]) == pytest.approx(ep_actions.mean())


def with_sla(spec: EnvSpec) -> EnvSpec:
    """``spec`` reporting the SLA as violated on the steps that reach an odd t."""

    def step(key, t, action):
        nxt, ts = spec.step(key, t, action)
        return nxt, ts._replace(metrics={**ts.metrics, "sla_violated": (t + 1) % 2 == 1})

    return spec._replace(step=step)


def test_sla_penalty_lowers_the_learned_reward_not_the_logged_return():
    agent = dataclasses.replace(SMALL, sla_penalty=0.25)
    trainer = make_trainer(with_sla(counting_env(True)), agent, num_envs=3)
    state, metrics = make_chunk_fn(trainer, 10)(init_seeds(trainer, 0, 1))
    exp = jax.tree.map(lambda x: np.asarray(x)[0, 0, :30], state.buffer.experience)
    t = exp.obs[:, 0]
    np.testing.assert_allclose(exp.reward, exp.action - 0.25 * ((t + 1) % 2 == 1), atol=1e-6)
    ep_actions = exp.action.reshape(10, 3).T.reshape(3, 2, 5).sum(-1)
    assert float(metrics["episode_return"][0]) == pytest.approx(ep_actions.mean())
    assert float(metrics["env/sla_violated"][0]) == pytest.approx(3 / 5)  # t = 1, 3, 5 of 5


def test_sla_penalty_needs_an_env_that_reports_the_sla():
    agent = dataclasses.replace(SMALL, sla_penalty=0.25)
    trainer = make_trainer(counting_env(True), agent, num_envs=3)
    with pytest.raises(ValueError, match="sla_violated"):
        make_chunk_fn(trainer, 1)(init_seeds(trainer, 0, 1))


def test_haql_acts_on_the_hint_while_its_weight_dominates():
    greedy = ScheduleConfig("linear", 0.0, 0.0, 1)  # epsilon 0: no exploration
    agent = dataclasses.replace(SMALL, epsilon=greedy)
    haql = HaqlConfig(eta=1e6, xi=ScheduleConfig("linear", 1.0, 1.0, 1))
    trainer = make_trainer(counting_env(True), agent, num_envs=3, haql=haql)
    state, metrics = make_chunk_fn(trainer, 10)(init_seeds(trainer, 0, 1))
    exp = jax.tree.map(lambda x: np.asarray(x)[0, 0, :30], state.buffer.experience)
    t = exp.obs[:, 0]
    # the hint t % 2 is taken wherever it is valid; at t = 1 the hinted action 1 is masked
    np.testing.assert_array_equal(exp.action[t != 1], t[t != 1] % 2)
    assert not exp.action[t == 1].any()
    assert float(metrics["xi"][0]) == 1.0


def test_iteration_shape_keeps_the_update_to_data_ratio():
    assert iteration_shape(1024, 0.25) == (1, 256)
    assert iteration_shape(4, 0.25) == (1, 1)
    assert iteration_shape(1, 0.1) == (10, 1)
    assert iteration_shape(8, 0.05) == (2, 1)  # 8 * 0.05 = 0.4 -> one update per 2 steps


def test_planned_updates_counts_the_iterations_after_learning_starts():
    # 64 envs at 4 updates per 64 transitions: (300,000 - 10,000) / 64 = 4,531.25 -> 4,532
    # iterations that learn, 4 updates each (the README run's 18,128 updates), or 6 each
    agent = AgentConfig(updates_per_step=0.0625, learning_starts=10_000)
    assert planned_updates(agent, 64, 300_000) == 4_532 * 4 == 18_128
    agent = AgentConfig(updates_per_step=0.09375, learning_starts=10_000)
    assert planned_updates(agent, 64, 300_000) == 4_532 * 6
    # 8 envs at 0.05: an update every 2 vector steps (16 env steps); 1,000 - 128 (the batch
    # size outweighs learning_starts=0) = 872 env steps -> 55 iterations
    assert planned_updates(AgentConfig(updates_per_step=0.05, learning_starts=0), 8, 1_000) == 55


def test_auto_decay_is_the_planned_updates_rounded_up_to_a_hundred():
    readme = TrainConfig(usecase=None, heuristic=True)  # the shipped defaults
    assert readme.agent.lr_decay_updates == "auto"
    # the README run's 18,128 planned updates (above) -> 18,200, the length it shipped with
    assert resolve(readme).config.agent.lr_decay_updates == 18_200
    assert readme.agent.lr_decay_updates == "auto"  # resolve settles a copy
    # 600,000 steps: (600,000 - 10,000) / 64 = 9,218.75 -> 9,219 iterations x 4 = 36,876
    longer = dataclasses.replace(readme, total_steps=600_000)
    assert resolve(longer).config.agent.lr_decay_updates == 36_900
    # a number is kept as it is; one below the run's planned updates is refused, naming auto
    fixed = dataclasses.replace(readme.agent, lr_decay_updates=18_200)
    assert resolve(dataclasses.replace(readme, agent=fixed)).config.agent.lr_decay_updates == 18_200
    with pytest.raises(ConfigError, match=r"18,200 is below the run's 36,876 updates.*=auto"):
        resolve(dataclasses.replace(longer, agent=fixed))
    for bad in ("soon", -1):
        agent = dataclasses.replace(readme.agent, lr_decay_updates=bad)
        with pytest.raises(ConfigError, match="lr_decay_updates must be auto or a number >= 0"):
            resolve(dataclasses.replace(readme, agent=agent))


def test_resolve_parses_the_use_case_and_makes_the_haql_choice_once():
    dqn = resolve(TrainConfig(usecase="ml", backend={"name": "sim"}), "ml")
    assert dqn.haql is None and dqn.usecase.name == dqn.name == "ml" and dqn.backend == "sim"
    haql = resolve(TrainConfig(usecase="ml", backend={"name": "sim"}, heuristic=True))
    assert haql.haql is haql.config.haql and haql.name == "ml"
    # a use case that does not load and a setting the backend cannot run: the one error type
    with pytest.raises(ConfigError, match="unknown use case 'nope'"):
        resolve(TrainConfig(usecase="nope"))
    with pytest.raises(ConfigError, match="backend=k8s trains one seed at a time"):
        resolve(TrainConfig(usecase=None, backend={"name": "k8s"}, seeds=2))


def test_chunk_plan_covers_the_run_once():
    assert chunk_plan(0, 10, 4) == [2, 2, 2, 2, 2]  # equal chunks: one compilation
    assert chunk_plan(4, 10, 4) == [3, 3]
    assert chunk_plan(0, 4688, 781) == [586] * 8  # the README run: 300,032 steps / 64 envs
    assert chunk_plan(0, 313, 156) == [156, 156, 1]  # a prime: no equal split near 156
    assert chunk_plan(0, 3, 10) == [3]
    assert chunk_plan(10, 10, 4) == []


def test_seeds_are_independent_runs():
    trainer = make_trainer(gymnax_env_spec(*gymnax.make("CartPole-v1")), SMALL, num_envs=4)
    two = init_seeds(trainer, 0, 2)
    one = init_seeds(trainer, 0, 1)
    w = jax.tree.leaves(two.learner.params)[1]  # a kernel, [seed, in, out]
    assert not np.allclose(w[0], w[1])
    assert not np.allclose(two.obs[0], two.obs[1])
    assert not np.array_equal(two.rng[0], two.rng[1])
    # run 0 of a two-seed program is the one-seed run
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[0])
    _, metrics = make_chunk_fn(trainer, 200)(two)
    assert metrics["episode_return"][0] != metrics["episode_return"][1]


def test_seed_i_of_a_batch_draws_the_keys_of_seed_i_alone():
    trainer = make_trainer(counting_env(terminal=False), SMALL, num_envs=2)
    three = init_seeds(trainer, 5, 3)  # seeds 5, 6, 7
    for i in range(3):
        alone = init_seeds(trainer, 5 + i, 1)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(three), strict=True):
            np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[i])
    # the key streams stay the same through training: no key depends on a float
    chunk = make_chunk_fn(trainer, 8)
    alone, _ = chunk(init_seeds(trainer, 7, 1))
    batched, _ = chunk(three)
    np.testing.assert_array_equal(np.asarray(alone.rng)[0], np.asarray(batched.rng)[2])


def test_dqn_solves_cartpole():
    """Mean greedy return >= 400 (of 500) after 300k env steps, on a fixed seed."""
    spec = gymnax_env_spec(*gymnax.make("CartPole-v1"))
    agent = AgentConfig(
        hidden=[120, 84],
        learning_rate=5e-4,
        lr_decay_updates=75_000,
        batch_size=128,
        buffer_size=50_000,
        learning_starts=1_000,
        updates_per_step=0.25,
        target_period=500,
        huber_delta=10.0,
        epsilon=ScheduleConfig("linear", 1.0, 0.05, 50_000),
    )
    trainer = make_trainer(spec, agent, num_envs=16)
    iters = math.ceil(300_000 / trainer.env_steps_per_iter)
    state, metrics = make_chunk_fn(trainer, iters)(init_seeds(trainer, 0, 1))
    returns, ended = greedy_returns(
        spec, trainer.network.apply, state.learner.params, jax.random.PRNGKey(123), 32, 600
    )
    # 4 updates per 16-env step once 1,000 steps are in: steps 63..18,750 -> 18,688 * 4
    assert int(metrics["updates"][0]) == (18_750 - 62) * 4
    assert bool(ended.all())  # every first episode ended (at the latest by truncation at 500)
    assert float(np.mean(returns)) >= 400.0, np.asarray(returns)
