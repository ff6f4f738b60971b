"""One DQN / HAQL agent's pieces built from the config, for every loop that trains one.

The Anakin loop, the actor/learner, the host-loop benchmark and any other driver take the
network, the optimiser, the replay, the learning step and the schedules from here, so they
learn identically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hmk8s.agents import dqn
from hmk8s.agents.config import AUTO, AgentConfig, HaqlConfig, heuristic_bonus, xi_schedule
from hmk8s.agents.network import QNetwork
from hmk8s.agents.replay import importance_weights, make_buffer, new_priorities

Array = jax.Array


class AgentParts(NamedTuple):
    """Network, optimiser, replay, one-step update and schedules of an agent (all pure)."""

    network: QNetwork
    optimizer: optax.GradientTransformation
    update: Callable[..., tuple[dqn.LearnerState, dqn.UpdateInfo]]
    buffer: Any
    epsilon: optax.Schedule
    xi: optax.Schedule
    haql: HaqlConfig | None
    agent: AgentConfig

    def bonus(self, env_steps: Array) -> Any:
        """``xi_t * eta`` on the rulebook's action when acting (0 for a pure DQN)."""
        return heuristic_bonus(self.haql, env_steps)

    def learning_reward(self, reward: Array, sla_violated: Array | None) -> Array:
        """The reward the learner sees: the env's, less ``sla_penalty`` on every step over the
        SLA (0 leaves it the env's, untouched). ``sla_violated`` is None for an env that
        reports no SLA, which a penalty cannot train on."""
        if self.agent.sla_penalty == 0.0:
            return reward
        if sla_violated is None:
            raise ValueError("agent.sla_penalty > 0 needs an env that reports sla_violated")
        return reward - self.agent.sla_penalty * sla_violated.astype(reward.dtype)

    def init_learner(self, key: Array, example_obs: Array) -> dqn.LearnerState:
        """Fresh online and target weights (equal) and optimiser state, 0 updates done."""
        params = self.network.init(key, example_obs)
        return dqn.LearnerState(
            params, params, self.optimizer.init(params), jnp.zeros((), jnp.int32)
        )

    def target_bonus(self, env_steps: Array) -> Any:
        """``xi_t * eta`` where the bootstrap target uses the heuristic, else 0."""
        return self.bonus(env_steps) if self.haql is not None and self.haql.in_target else 0.0

    def learn(
        self, learner: dqn.LearnerState, replay: Any, key: Array, target_bonus: Any
    ) -> tuple[dqn.LearnerState, Any, Array]:
        """Sample a batch, update on it and, with prioritised replay, set the sampled items'
        priorities to ``|TD error| + epsilon``: ``(learner, replay, loss)``. The one learning
        step of every driver; uniform replay returns ``replay`` itself."""
        sample = self.buffer.sample(replay, key)
        if self.agent.priority_exponent == 0.0:
            learner, info = self.update(learner, sample.experience, target_bonus)
            return learner, replay, info.loss
        weights = importance_weights(sample.probabilities, self.agent.priority_beta)
        learner, info = self.update(learner, sample.experience, target_bonus, weights)
        priorities = new_priorities(
            info.td_error, sample.probabilities, self.agent.priority_epsilon
        )
        return learner, self.buffer.set_priorities(replay, sample.indices, priorities), info.loss


def make_agent_parts(
    agent: AgentConfig,
    num_actions: int,
    haql: HaqlConfig | None = None,
    axis_name: str | None = None,
    replay_shards: int = 1,
) -> AgentParts:
    """The pieces for ``num_actions`` actions; ``haql=None`` is a pure DQN (``xi = eta = 0``);
    ``axis_name`` averages the update's gradients over that mesh axis (data parallelism), where
    each of the ``replay_shards`` devices keeps ``buffer_size / replay_shards`` transitions."""
    if agent.lr_decay_updates == AUTO:
        raise ValueError(
            "agent.lr_decay_updates=auto becomes a number once the run's length is known: "
            "take the agent of hmk8s.train.config.resolve's spec (or set the number)"
        )
    network = QNetwork(tuple(agent.hidden), num_actions, agent.layer_norm)
    optimizer = dqn.make_optimizer(agent.learning_rate, agent.max_grad_norm, agent.lr_decay_updates)
    update = dqn.make_update(
        network.apply,
        optimizer,
        agent.gamma,
        agent.double,
        agent.huber_delta,
        agent.target_period,
        agent.target_tau,
        axis_name,
    )
    buffer = make_buffer(
        agent.buffer_size // replay_shards, 1, agent.batch_size, agent.priority_exponent
    )
    eps = agent.epsilon
    epsilon = dqn.make_schedule(eps.kind, eps.start, eps.end, eps.steps)
    return AgentParts(network, optimizer, update, buffer, epsilon, xi_schedule(haql), haql, agent)
