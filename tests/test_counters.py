"""Counters past int32: the env-step count holds at 2**31 - 1 and the schedules at their ends."""

from __future__ import annotations

import gymnax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.agents.config import AgentConfig, HaqlConfig, ScheduleConfig
from hmk8s.agents.counters import INT32_MAX, saturating_add
from hmk8s.agents.dqn import make_schedule
from hmk8s.envs.gymnax_spec import gymnax_env_spec
from hmk8s.train.anakin.loop import init_seeds, make_chunk_fn, make_trainer


@pytest.mark.parametrize(
    ("counter", "amount"),
    [(0, 5), (1_000, 0), (INT32_MAX - 64, 63), (INT32_MAX - 64, 64), (INT32_MAX - 64, 65),
     (INT32_MAX, 1), (INT32_MAX, 2**30)],
)  # fmt: skip
def test_saturating_add_is_python_addition_capped(counter, amount):
    got = saturating_add(jnp.int32(counter), amount)
    assert got.dtype == jnp.int32
    assert int(got) == min(counter + amount, INT32_MAX)  # Python ints never wrap


def test_a_wrapped_count_would_restart_the_schedule():
    epsilon = make_schedule("linear", 1.0, 0.05, 100_000)
    wrapped = jnp.int32(INT32_MAX) + jnp.int32(1)  # what a plain + does
    assert int(wrapped) == -(2**31)
    assert float(epsilon(wrapped)) == 1.0  # exploration starts over
    held = saturating_add(jnp.int32(INT32_MAX), 1)
    assert float(epsilon(held)) == pytest.approx(0.05)


def test_training_past_int32_keeps_epsilon_and_xi_at_their_ends():
    agent = AgentConfig(
        hidden=[8],
        lr_decay_updates=0,
        batch_size=4,
        buffer_size=64,
        learning_starts=8,
        updates_per_step=0.25,
        epsilon=ScheduleConfig("linear", 1.0, 0.05, 1_000),
    )
    haql = HaqlConfig(eta=1.0, xi=ScheduleConfig("exponential", 1.0, 0.5, 1_000))
    spec = gymnax_env_spec(*gymnax.make("CartPole-v1"))
    trainer = make_trainer(spec, agent, num_envs=4, haql=haql)
    per_iter = trainer.env_steps_per_iter
    state = init_seeds(trainer, 0, 1)
    # a filled replay and a count two iterations short of the int32 limit, as after 2**31 steps
    state, _ = make_chunk_fn(trainer, 4)(state)
    updates_before = int(state.learner.updates[0])
    near_end = INT32_MAX - 2 * per_iter + 1
    state = state._replace(env_steps=jnp.full_like(state.env_steps, near_end))
    state, metrics = make_chunk_fn(trainer, 4)(state)  # four iterations: two past the limit
    assert int(state.env_steps[0]) == INT32_MAX
    assert float(metrics["epsilon"][0]) == pytest.approx(0.05)
    assert float(metrics["xi"][0]) == pytest.approx(0.5)
    # learning went on: env_steps >= learning_starts still holds at the held count
    assert int(state.learner.updates[0]) == updates_before + 4 * trainer.updates_per_iter
    assert np.isfinite(np.asarray(metrics["loss"])).all()
