"""The pure functions of asynchronous training: batched acting, replay writes, updates, books.

The actor/learner shell (`async_actor`, `learner_thread`, `async_train`) moves data between
threads; everything it computes comes from here, built out of the trainer's own pieces
(`dqn.epsilon_greedy`, `AgentParts.learn`, the flashbax replay), so the asynchronous path learns
exactly as the simulator path does. The state is the simulator path's `TrainState`, with the
per-env episode books (`EnvBooks`) as its ``env_state``, so checkpoints are the same format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hmk8s.agents import dqn
from hmk8s.agents.config import AgentConfig, HaqlConfig
from hmk8s.agents.network import QNetwork
from hmk8s.agents.parts import make_agent_parts
from hmk8s.agents.replay import (
    Transition,
    example_transition,
    priority_state,
    with_priority_state,
)
from hmk8s.train.state import TrainState

Array = jax.Array


class EnvBooks(NamedTuple):
    """Per-env episode bookkeeping, advanced only when a transition reaches the replay.

    ``env_steps[i]``: transitions env ``i`` has written; ``episode[i]``: index of its current
    episode; ``episode_step[i]``: steps taken in it; ``episode_return[i]``: reward summed in
    it; ``episodes_done[i]``: episodes it ended by termination or truncation.
    """

    env_steps: np.ndarray
    episode: np.ndarray
    episode_step: np.ndarray
    episode_return: np.ndarray
    episodes_done: np.ndarray


class StepBook(NamedTuple):
    """Where one transition sits in its env's history, and the episode's return up to it."""

    env_step: int
    episode: int
    episode_step: int
    episode_return: float


def new_books(num_envs: int) -> EnvBooks:
    """Books of envs that have not stepped yet."""
    zeros = np.zeros((num_envs,), np.int64)
    return EnvBooks(zeros, zeros, zeros, np.zeros((num_envs,), np.float64), zeros)


def host_books(books: EnvBooks) -> EnvBooks:
    """Books as host arrays (a restored checkpoint holds device arrays)."""
    return EnvBooks(*(np.asarray(x).copy() for x in books))


def advance_books(
    books: EnvBooks, env: int, reward: float, done: bool, first: bool
) -> tuple[EnvBooks, StepBook]:
    """Books after env ``env`` wrote one transition, and that transition's place.

    ``first`` marks the first step after a reset: when the env's current episode already has
    steps (it was cut by a failure or by a stop and resume), the step opens the next episode.
    """
    env_steps, episode, episode_step, episode_return, episodes_done = (x.copy() for x in books)
    if first and episode_step[env] > 0:
        episode[env] += 1
        episode_step[env] = 0
        episode_return[env] = 0.0
    env_steps[env] += 1
    episode_step[env] += 1
    episode_return[env] += reward
    place = StepBook(
        int(env_steps[env]) - 1,
        int(episode[env]),
        int(episode_step[env]) - 1,
        float(episode_return[env]),
    )
    if done:
        episodes_done[env] += 1
        episode[env] += 1
        episode_step[env] = 0
        episode_return[env] = 0.0
    return EnvBooks(env_steps, episode, episode_step, episode_return, episodes_done), place


def owed_updates(written: int, updates: int, ratio: float, learning_starts: int) -> int:
    """Updates the learner may still do to hold ``updates <= ratio * (written - starts)``."""
    if written < learning_starts:
        return 0
    return max(0, int(ratio * (written - learning_starts)) - updates)


def chunk_sizes(n: int, largest: int) -> list[int]:
    """``n`` as a sum of powers of two up to ``largest``, so replay adds compile a few shapes."""
    sizes = []
    size = 1 << (max(largest, 1).bit_length() - 1)
    while n > 0:
        while size > n:
            size >>= 1
        sizes.append(size)
        n -= size
    return sizes


def stack_transitions(items: list[Transition]) -> Transition:
    """One batch (leading axis) from host transitions."""
    return Transition(*(np.stack(column) for column in zip(*items, strict=True)))


@dataclass(frozen=True)
class AsyncFns:
    """The jitted pieces the actor and the learner call; built once per run."""

    network: QNetwork
    num_envs: int
    learning_starts: int
    init: Callable[[Array, np.ndarray], TrainState]
    act: Callable[[object, Array, Array, Array, Array, Array], Array]
    add: Callable[[object, Transition, Array | None], object]
    learn: Callable[
        [dqn.LearnerState, object, Array, Array], tuple[dqn.LearnerState, object, Array]
    ]
    epsilon: Callable[[Array], Array]
    xi: Callable[[Array], Array]


def make_async_fns(
    num_actions: int, agent: AgentConfig, num_envs: int, haql: HaqlConfig | None = None
) -> AsyncFns:
    """Build the actor's batched policy and the learner's add / update; ``haql=None`` is DQN.

    ``act(params, obs[B], mask[B], hint[B], env_steps, key)`` takes ``B = num_envs`` rows (the
    actor pads a partial batch), so it compiles once. ``learn(learner, buffer, key, env_steps)
    -> (learner, buffer, loss)`` samples a batch, does one update and (prioritised replay) sets
    the sampled items' priorities; ``add(buffer, batch, sla_violated[B] or None)`` stores the
    batch with the learner's reward (`AgentParts.learning_reward`) and donates the buffer.
    """
    parts = make_agent_parts(agent, num_actions, haql)
    network, epsilon, xi, buffer = parts.network, parts.epsilon, parts.xi, parts.buffer

    def init(key: Array, obs: np.ndarray) -> TrainState:
        k_net, k_run = jax.random.split(key)
        example = jnp.asarray(obs, jnp.float32)
        return TrainState(
            learner=parts.init_learner(k_net, example),
            buffer=buffer.init(example_transition(example, num_actions)),
            env_state=new_books(num_envs),
            obs=np.zeros((num_envs, example.shape[0]), np.float32),
            mask=np.ones((num_envs, num_actions), bool),
            hint=np.full((num_envs,), -1, np.int32),
            episode_return=np.zeros((num_envs,), np.float32),
            env_steps=np.zeros((), np.int32),
            rng=k_run,
        )

    @jax.jit
    def act(params, obs, mask, hint, env_steps, key):
        q = network.apply(params, obs)
        bonus = parts.bonus(env_steps)
        return dqn.epsilon_greedy(key, q, mask, hint, epsilon(env_steps), bonus).astype(jnp.int32)

    @partial(jax.jit, donate_argnums=0)
    def add(buffer_state, batch: Transition, sla_violated: Array | None):
        reward = parts.learning_reward(batch.reward, sla_violated)
        return buffer.add(buffer_state, batch._replace(reward=reward))

    @jax.jit
    def learn_step(learner: dqn.LearnerState, buffer_state, key, env_steps):
        learner, after, loss = parts.learn(
            learner, buffer_state, key, parts.target_bonus(env_steps)
        )
        return learner, priority_state(after), loss

    def learn(learner: dqn.LearnerState, buffer_state, key, env_steps):
        # only the priorities leave the compiled step, so the transitions are never copied
        learner, priorities, loss = learn_step(learner, buffer_state, key, env_steps)
        return learner, with_priority_state(buffer_state, priorities), loss

    return AsyncFns(
        network=network,
        num_envs=num_envs,
        learning_starts=max(agent.learning_starts, agent.batch_size),
        init=init,
        act=act,
        add=add,
        learn=learn,
        epsilon=epsilon,
        xi=xi,
    )
