"""One DQN / HAQL agent's pieces built from the config, for every loop that trains one.

The Anakin loop, the host-loop benchmark and any other driver take the network, the
optimiser, the update and the exploration schedules from here, so they learn identically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import optax

from hmk8s.agents import dqn
from hmk8s.agents.network import QNetwork
from hmk8s.agents.replay import Transition
from hmk8s.train.config import AgentConfig, HaqlConfig

Array = jax.Array


class AgentParts(NamedTuple):
    """Network, optimiser, one-step update and schedules of an agent (all pure)."""

    network: QNetwork
    optimizer: optax.GradientTransformation
    update: Callable[[dqn.LearnerState, Transition, Array], tuple[dqn.LearnerState, Array]]
    epsilon: optax.Schedule
    xi: optax.Schedule
    eta: float
    in_target: bool

    def target_bonus(self, env_steps: Array) -> Array | float:
        """``xi_t * eta`` where the bootstrap target uses the heuristic, else 0."""
        return self.xi(env_steps) * self.eta if self.in_target else 0.0


def make_agent_parts(
    agent: AgentConfig, num_actions: int, haql: HaqlConfig | None = None
) -> AgentParts:
    """The pieces for ``num_actions`` actions; ``haql=None`` is a pure DQN (``xi = eta = 0``)."""
    network = QNetwork(hidden=tuple(agent.hidden), num_actions=num_actions)
    optimizer = dqn.make_optimizer(agent.learning_rate, agent.max_grad_norm, agent.lr_decay_updates)
    update = dqn.make_update(
        network.apply,
        optimizer,
        agent.gamma,
        agent.double,
        agent.huber_delta,
        agent.target_period,
        agent.target_tau,
    )
    eps = agent.epsilon
    epsilon = dqn.make_schedule(eps.kind, eps.start, eps.end, eps.steps)
    if haql is None:
        return AgentParts(
            network, optimizer, update, epsilon, optax.constant_schedule(0.0), 0.0, False
        )
    xi = dqn.make_schedule(haql.xi.kind, haql.xi.start, haql.xi.end, haql.xi.steps)
    return AgentParts(network, optimizer, update, epsilon, xi, haql.eta, haql.in_target)
