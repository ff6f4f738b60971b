"""The Anakin training loop: acting, env steps, replay and updates in one `lax.scan`.

One *iteration* is ``steps_per_iter`` vectorised env steps (each writes
``num_envs`` transitions to the replay) followed by ``updates_per_iter``
gradient updates, so the update-to-data ratio holds for any ``num_envs``. A
*chunk* is a fixed number of iterations compiled once; the host logs and
checkpoints between chunks. Every random draw comes from the key carried in the
train state, so a chunk is a pure function of the state and a run restored
from a checkpoint continues bit for bit. Seeds are a leading axis of the whole
state (`jax.vmap`), each with its own weights, exploration and env keys.

With ``devices > 1`` the same loop runs over a ``seed`` by ``data`` device mesh (`mesh`): the
seeds are split over the ``seed_devices`` rows, and along a row each of its ``devices /
seed_devices`` devices steps its share of ``num_envs`` into its own replay shard, samples its
own batch of ``batch_size`` and the gradients are averaged over the row. One device is the
single-device program itself, so its results are unchanged bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from hmk8s.agents import dqn
from hmk8s.agents.config import AgentConfig, HaqlConfig, iteration_shape
from hmk8s.agents.parts import make_agent_parts
from hmk8s.agents.replay import example_transition, priority_state, with_priority_state
from hmk8s.envs.spec import EnvSpec
from hmk8s.train.anakin.mesh import DATA_AXIS, chunk_over_mesh, init_over_mesh, make_mesh
from hmk8s.train.anakin.pqn_loop import make_pqn_trainer
from hmk8s.train.anakin.trainer import (
    SEEDS,
    Metrics,
    Trainer,
    fresh_state,
    make_act,
    make_iterations,
    reductions,
)
from hmk8s.train.cache import ProgramCache
from hmk8s.train.state import TrainState

__all__ = ["SEEDS", "Trainer", "greedy_returns", "init_seeds", "make_chunk_fn", "make_trainer"]

Array = jax.Array


def make_trainer(
    spec: EnvSpec,
    agent: AgentConfig,
    num_envs: int,
    haql: HaqlConfig | None = None,
    devices: int = 1,
    seed_devices: int = 1,
) -> Trainer:
    """Build the pure init / chunk functions; ``haql=None`` is a pure DQN. ``devices > 1``
    splits the seeds over ``seed_devices`` rows of devices, and ``num_envs`` and the replay's
    ``buffer_size`` over the ``devices / seed_devices`` devices of a row. ``agent.kind`` "pqn"
    builds PQN's loop instead (`make_pqn_trainer`)."""
    if agent.kind == "pqn":
        return make_pqn_trainer(spec, agent, num_envs, haql, devices)
    if seed_devices < 1 or devices % seed_devices:
        raise ValueError(f"seed_devices={seed_devices} does not divide devices={devices}")
    data_devices = devices // seed_devices
    if num_envs % data_devices:
        raise ValueError(f"num_envs={num_envs} does not split evenly over {data_devices} devices")
    mesh = make_mesh(devices, seed_devices) if devices > 1 else None
    axis = DATA_AXIS if mesh is not None else None
    parts = make_agent_parts(agent, spec.num_actions, haql, axis, data_devices)
    network, buffer = parts.network, parts.buffer
    apply_fn, epsilon, xi = network.apply, parts.epsilon, parts.xi
    steps_per_iter, updates_per_iter = iteration_shape(num_envs, agent.updates_per_step)
    learning_starts = max(agent.learning_starts, agent.batch_size)
    local_envs = num_envs // data_devices
    v_reset = jax.vmap(spec.reset)
    _, mean = reductions(axis)
    act = make_act(spec, apply_fn, epsilon, parts.bonus, parts.learning_reward, num_envs)

    def init(key: Array) -> TrainState:
        k_net, k_env, k_run = jax.random.split(key, 3)
        if axis is not None:  # the network's key stays shared: its weights start replicated
            index = jax.lax.axis_index(axis)
            k_env, k_run = jax.random.fold_in(k_env, index), jax.random.fold_in(k_run, index)
        reset = v_reset(jax.random.split(k_env, local_envs))
        example = reset[1][0]
        learner = parts.init_learner(k_net, example)
        replay = buffer.init(example_transition(example, spec.num_actions))
        return fresh_state(learner, replay, reset, k_run)

    def env_step(state: TrainState, _: None) -> tuple[TrainState, tuple[tuple, Metrics]]:
        state, transition, _, finished, metrics = act(state)
        return state._replace(buffer=buffer.add(state.buffer, transition)), (finished, metrics)

    def learn(operand: tuple) -> tuple[dqn.LearnerState, Array, Any, Array, Array]:
        learner, rng, replay, env_steps = operand
        target_bonus = parts.target_bonus(env_steps)

        def update_step(carry: tuple, _: None) -> tuple[tuple, Array]:
            learner, rng, priorities = carry
            rng, k_sample = jax.random.split(rng)
            learner, replay_after, loss = parts.learn(
                learner, with_priority_state(replay, priorities), k_sample, target_bonus
            )
            return (learner, rng, priority_state(replay_after)), loss

        (learner, rng, priorities), losses = jax.lax.scan(
            update_step, (learner, rng, priority_state(replay)), None, length=updates_per_iter
        )
        # the loss is averaged over the devices here, as the gradients were: like them it is
        # then the same on every device, as the branch skipping the update needs
        loss_sum = mean(losses.sum())
        return learner, rng, priorities, loss_sum, jnp.asarray(updates_per_iter, jnp.int32)

    def skip(operand: tuple) -> tuple[dqn.LearnerState, Array, Any, Array, Array]:
        learner, rng, replay, _ = operand
        zero = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        return learner, rng, priority_state(replay), *zero

    def iteration(state: TrainState, _: None) -> tuple[TrainState, tuple]:
        state, acted = jax.lax.scan(env_step, state, None, length=steps_per_iter)
        # Every seed steps the same envs, so whether updates have started is the same for all
        # of them: taken over the seeds' `vmap` axis, the predicate is not batched and the
        # `cond` stays a branch (a batched one becomes a `select`, computing the updates
        # before `learning_starts` only to drop them). Only the learner, the key and the
        # replay's priorities (prioritised replay's sum tree; nothing for uniform replay) pass
        # through it, so no branch copies the replay's transitions.
        started = jax.lax.pmax((state.env_steps >= learning_starts).astype(jnp.int32), SEEDS)
        operand = (state.learner, state.rng, state.buffer, state.env_steps)
        learner, rng, priorities, loss_sum, n_updates = jax.lax.cond(
            started > 0, learn, skip, operand
        )
        buffer_state = with_priority_state(state.buffer, priorities)
        state = state._replace(learner=learner, rng=rng, buffer=buffer_state)
        return state, (*jax.tree.map(jnp.sum, acted), (loss_sum, n_updates))

    return Trainer(
        spec=spec,
        network=network,
        agent=agent,
        haql=haql,
        num_envs=num_envs,
        steps_per_iter=steps_per_iter,
        updates_per_iter=updates_per_iter,
        init=init,
        run=make_iterations(iteration, steps_per_iter, (epsilon, xi), axis),
        epsilon=epsilon,
        xi=xi,
        mesh=mesh,
    )


def init_seeds(
    trainer: Trainer, seed: int, seeds: int, programs: ProgramCache | None = None
) -> TrainState:
    """Train states of ``seeds`` independent runs stacked on a leading axis (placed over the
    trainer's mesh when it has one); ``programs`` keeps the init program between runs."""
    if seeds % trainer.seed_devices:
        raise ValueError(
            f"seeds={seeds} does not split evenly over seed_devices={trainer.seed_devices}"
        )
    init = jax.vmap(trainer.init)
    keys = seed_keys(seed, seeds)
    if trainer.mesh is not None:
        return init_over_mesh(init, trainer.mesh)(keys)
    if programs is None:  # also traceable (`jax.eval_shape`), which a compiled program is not
        return jax.jit(init)(keys)
    return programs.compile("init", jax.jit(init), keys)(keys)


def seed_keys(seed: int, seeds: int) -> Array:
    """Key of run ``i`` is ``fold_in(PRNGKey(seed + i), 0)``: run ``i`` of ``seed=s seeds=N`` draws
    the key streams of ``seed=s+i`` alone, so a batched seed can be rerun, or checked, by itself."""
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), 0))(
        seed + jnp.arange(seeds)
    )


def make_chunk_fn(
    trainer: Trainer, num_iters: int
) -> Callable[[TrainState], tuple[TrainState, Metrics]]:
    """``chunk(states) -> (states, metrics)`` over all seeds, compiled once; donates its input."""
    run = jax.vmap(partial(trainer.run, num_iters=num_iters), axis_name=SEEDS)
    if trainer.mesh is None:
        return jax.jit(run, donate_argnums=0)
    return chunk_over_mesh(run, trainer.mesh)


@partial(jax.jit, static_argnames=("spec", "apply_fn", "num_envs", "max_steps"))
def greedy_returns(
    spec: EnvSpec,
    apply_fn: Callable[[Any, Array], Array],
    seed_params: Any,
    key: Array,
    num_envs: int,
    max_steps: int,
) -> tuple[Array, Array]:
    """Return of each env's first greedy episode (and whether it ended within ``max_steps``),
    [seeds, envs] for ``seed_params`` stacked on a leading seed axis: every seed on the same
    episodes, in one program compiled once per env and network (the weights are its argument).
    """
    k_reset, k_run = jax.random.split(key)
    env_state, obs, mask, hint = jax.vmap(spec.reset)(jax.random.split(k_reset, num_envs))
    zeros = jnp.zeros((num_envs,), jnp.float32)
    not_done = jnp.zeros((num_envs,), jnp.bool_)

    def one(params: Any) -> tuple[Array, Array]:
        def step(carry, k):
            env_state, obs, mask, hint, ret, first, ended = carry
            action = dqn.greedy_action(apply_fn(params, obs), mask, hint)
            env_state, ts = jax.vmap(spec.step)(jax.random.split(k, num_envs), env_state, action)
            ret = ret + jnp.where(ended, 0.0, ts.reward.astype(jnp.float32))
            done = ts.terminated | ts.truncated
            first = jnp.where(done & ~ended, ret, first)
            return (env_state, ts.obs, ts.mask, ts.hint, ret, first, ended | done), None

        carry = (env_state, obs, mask, hint, zeros, zeros, not_done)
        (_, _, _, _, ret, first, ended), _ = jax.lax.scan(
            step, carry, jax.random.split(k_run, max_steps)
        )
        return jnp.where(ended, first, ret), ended

    return jax.vmap(one)(seed_params)
