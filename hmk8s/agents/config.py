"""The agent's settings: Q-network and learner hyperparameters, exploration and the HAQL
heuristic's weight schedule, and the weight the rulebook gets in the trained agent's policy.

Every driver (the Anakin loop, the actor/learner, evaluation, the controller) reads these
dataclasses; the rulebook's weight is computed here only (`heuristic_bonus`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optax

from hmk8s.agents.dqn import make_schedule

SCHEDULE_KINDS = ("linear", "exponential")
#: the learners: "dqn" (replay and a target network, HAQL's home) and "pqn" (lambda-returns on
#: each fresh rollout, no replay, no target network; docs/algorithm.md, "PQN")
AGENT_KINDS = ("dqn", "pqn")


@dataclass
class ScheduleConfig:
    """``start -> end`` over ``steps`` env steps (per env-seed, summed over envs)."""

    kind: str = "linear"
    start: float = 1.0
    end: float = 0.05
    steps: int = 100_000


@dataclass
class PqnConfig:
    """PQN's rollout and learning (Gallici et al., "Simplifying Deep Temporal Difference
    Learning", 2025): each iteration steps every env ``rollout_steps`` times, computes the
    ``td_lambda``-returns of that rollout with the current network, then learns on it for
    ``epochs`` passes of ``minibatches`` minibatches."""

    td_lambda: float = 0.65
    rollout_steps: int = 32
    epochs: int = 4
    minibatches: int = 8


@dataclass
class AgentConfig:
    """Q-network and learner hyperparameters shared by DQN and HAQL.

    ``kind`` picks the learner (`AGENT_KINDS`); PQN reads the network, the rate, ``gamma``,
    ``max_grad_norm``, ``epsilon`` and its ``pqn`` block, and none of the replay and target
    settings. ``layer_norm`` puts a LayerNorm before each hidden ReLU (PQN's stabiliser).

    ``lr_decay_updates > 0`` decays the learning rate linearly to 0 over that many updates
    (a fixed horizon, so extending ``total_steps`` on resume changes nothing already run).
    ``priority_exponent > 0`` turns on prioritised replay (``alpha``; 0 is uniform replay),
    with importance-sampling exponent ``priority_beta`` and priorities ``|TD error| +
    priority_epsilon``.

    ``sla_penalty > 0`` trains on ``R - sla_penalty [L > 1]``: the reward's ``R_perf`` charges
    a breach by its size, so a small one costs less than the pods that would prevent it; the
    penalty makes every breach cost at least that much. Only the learner sees it: returns
    are logged and evaluated on the env's reward.
    """

    kind: str = "dqn"
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    layer_norm: bool = False
    learning_rate: float = 2.5e-4
    lr_decay_updates: int = 0
    gamma: float = 0.99
    batch_size: int = 128
    buffer_size: int = 100_000
    learning_starts: int = 10_000
    updates_per_step: float = 0.25
    double: bool = True
    huber_delta: float = 1.0
    max_grad_norm: float = 10.0
    target_period: int = 500
    target_tau: float = 1.0
    priority_exponent: float = 0.0
    priority_beta: float = 0.4
    priority_epsilon: float = 1e-6
    sla_penalty: float = 0.0
    epsilon: ScheduleConfig = field(default_factory=ScheduleConfig)
    pqn: PqnConfig = field(default_factory=PqnConfig)


@dataclass
class HaqlConfig:
    """Heuristic acceleration: ``H(s, a) = eta [a == hint]`` weighted by ``xi_t``.

    ``deployed_xi`` is the heuristic's weight in the trained agent's greedy policy,
    ``argmax [Q + deployed_xi H]``; ``None`` keeps ``xi.end``, the weight it ended training with.
    """

    eta: float = 1.0
    in_target: bool = True
    xi: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(kind="linear", start=1.0, end=0.5, steps=200_000)
    )
    deployed_xi: float | None = None


def iteration_shape(num_envs: int, updates_per_step: float) -> tuple[int, int]:
    """(vector env steps, updates) per iteration for a target updates-per-transition ratio:
    the ratio a loop stepping ``num_envs`` envs at a time actually runs."""
    per_vector_step = num_envs * updates_per_step
    if per_vector_step >= 1.0:
        return 1, round(per_vector_step)
    return round(1.0 / per_vector_step), 1


def planned_updates(agent: AgentConfig, num_envs: int, total_steps: int) -> int:
    """About how many updates a run of ``total_steps`` env steps makes (per seed)."""
    if agent.kind == "pqn":
        p = agent.pqn
        return math.ceil(total_steps / (p.rollout_steps * num_envs)) * p.epochs * p.minibatches
    steps_per_iter, updates_per_iter = iteration_shape(num_envs, agent.updates_per_step)
    learning_steps = max(total_steps - max(agent.learning_starts, agent.batch_size), 0)
    return math.ceil(learning_steps / (steps_per_iter * num_envs)) * updates_per_iter


def xi_schedule(haql: HaqlConfig | None) -> optax.Schedule:
    """``xi_t``, the heuristic's weight after ``t`` env steps; 0 throughout for a pure DQN."""
    if haql is None:
        return optax.constant_schedule(0.0)
    xi = haql.xi
    return make_schedule(xi.kind, xi.start, xi.end, xi.steps)


def heuristic_bonus(haql: HaqlConfig | None, env_steps: Any) -> Any:
    """``xi_t * eta``: what the rulebook's action gets on top of its Q-value after
    ``env_steps`` env steps (how HAQL acts then, exploration aside); 0 for a pure DQN. The one
    place this weight is computed, for acting, the bootstrap target and the learning curves."""
    return 0.0 if haql is None else xi_schedule(haql)(env_steps) * haql.eta


def deployed_weight(haql: HaqlConfig) -> float:
    """``deployed_xi``, else ``xi.end``: how the agent chose actions at the end of training."""
    return haql.xi.end if haql.deployed_xi is None else haql.deployed_xi


def deployed_bonus(haql: HaqlConfig | None) -> float:
    """Weight of the rulebook's action in the trained agent's policy: ``deployed_weight * eta``
    for HAQL, 0 for a pure DQN."""
    return 0.0 if haql is None else deployed_weight(haql) * haql.eta
