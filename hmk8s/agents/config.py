"""The agent's settings: Q-network and learner hyperparameters, exploration and the HAQL
heuristic's weight schedule, and the weight the rulebook gets in the trained agent's policy.

Every driver (the Anakin loop, the actor/learner, evaluation, the controller) reads these
dataclasses; the rulebook's weight is computed here only (`heuristic_bonus`). They are the
schema: every default is read from the shipped YAML (`hmk8s.configs.default`), the
agent's from ``configs/agent/dqn.yaml`` and HAQL's from ``configs/config.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optax

from hmk8s.agents.dqn import make_schedule
from hmk8s.configs import default

SCHEDULE_KINDS = ("linear", "exponential")
#: ``agent.lr_decay_updates: auto``: anneal over the run's planned updates (`decay_updates`)
AUTO = "auto"
#: the learners: "dqn" (replay and a target network, HAQL's home) and "pqn" (lambda-returns on
#: each fresh rollout, no replay, no target network; docs/algorithm.md, "PQN")
AGENT_KINDS = ("dqn", "pqn")
#: The agents the evaluation compares, by name: whether each learns and acts with the rulebook
#: (``heuristic=true``). A run's name for its agent is `agent_name`.
AGENTS = {"dqn": False, "haql": True}


@dataclass
class ScheduleConfig:
    """``start -> end`` over ``steps`` env steps (per env-seed, summed over envs)."""

    kind: str
    start: float
    end: float
    steps: int


@dataclass
class PqnConfig:
    """PQN's rollout and learning (Gallici et al., "Simplifying Deep Temporal Difference
    Learning", 2025): each iteration steps every env ``rollout_steps`` times, computes the
    ``td_lambda``-returns of that rollout with the current network, then learns on it for
    ``epochs`` passes of ``minibatches`` minibatches."""

    td_lambda: float = default("agent.pqn.td_lambda")
    rollout_steps: int = default("agent.pqn.rollout_steps")
    epochs: int = default("agent.pqn.epochs")
    minibatches: int = default("agent.pqn.minibatches")


@dataclass
class AgentConfig:
    """Q-network and learner hyperparameters shared by DQN and HAQL.

    ``kind`` picks the learner (`AGENT_KINDS`); PQN reads the network, the rate, ``gamma``,
    ``max_grad_norm``, ``epsilon`` and its ``pqn`` block, and none of the replay and target
    settings. ``layer_norm`` puts a LayerNorm before each hidden ReLU (PQN's stabiliser).

    ``lr_decay_updates > 0`` decays the learning rate linearly to 0 over that many updates
    (a fixed horizon, so extending ``total_steps`` on resume changes nothing already run);
    ``auto`` is the run's planned updates rounded up to a hundred (`decay_updates`), which
    ``hmk8s.train.config.resolve`` turns into that number before anything reads it.
    ``priority_exponent > 0`` turns on prioritised replay (``alpha``; 0 is uniform replay),
    with importance-sampling exponent ``priority_beta`` and priorities ``|TD error| +
    priority_epsilon``.

    ``sla_penalty > 0`` trains on ``R - sla_penalty [L > 1]``: the reward's ``R_perf`` charges
    a breach by its size, so a small one costs less than the pods that would prevent it; the
    penalty makes every breach cost at least that much. Only the learner sees it: returns
    are logged and evaluated on the env's reward.
    """

    kind: str = default("agent.kind")
    hidden: list[int] = default("agent.hidden")
    layer_norm: bool = default("agent.layer_norm")
    learning_rate: float = default("agent.learning_rate")
    lr_decay_updates: int | str = default("agent.lr_decay_updates")
    gamma: float = default("agent.gamma")
    batch_size: int = default("agent.batch_size")
    buffer_size: int = default("agent.buffer_size")
    learning_starts: int = default("agent.learning_starts")
    updates_per_step: float = default("agent.updates_per_step")
    double: bool = default("agent.double")
    huber_delta: float = default("agent.huber_delta")
    max_grad_norm: float = default("agent.max_grad_norm")
    target_period: int = default("agent.target_period")
    target_tau: float = default("agent.target_tau")
    priority_exponent: float = default("agent.priority_exponent")
    priority_beta: float = default("agent.priority_beta")
    priority_epsilon: float = default("agent.priority_epsilon")
    sla_penalty: float = default("agent.sla_penalty")
    epsilon: ScheduleConfig = default("agent.epsilon", ScheduleConfig)
    pqn: PqnConfig = field(default_factory=PqnConfig)


@dataclass
class HaqlConfig:
    """Heuristic acceleration: ``H(s, a) = eta [a == hint]`` weighted by ``xi_t``.

    ``deployed_xi`` is the heuristic's weight in the trained agent's greedy policy,
    ``argmax [Q + deployed_xi H]``; ``None`` keeps ``xi.end``, the weight it ended training with.
    """

    eta: float = default("haql.eta")
    in_target: bool = default("haql.in_target")
    xi: ScheduleConfig = default("haql.xi", ScheduleConfig)
    deployed_xi: float | None = default("haql.deployed_xi")


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


def decay_updates(agent: AgentConfig, num_envs: int, total_steps: int) -> int:
    """``agent.lr_decay_updates`` as a number: ``auto`` is the run's planned updates rounded up
    to a hundred (the README run's 18,128 give 18,200), so the rate reaches 0 at about the
    run's end; a number is kept as it is."""
    if agent.lr_decay_updates != AUTO:
        return int(agent.lr_decay_updates)
    return math.ceil(planned_updates(agent, num_envs, total_steps) / 100) * 100


def learner_haql(heuristic: bool, haql: HaqlConfig) -> HaqlConfig | None:
    """The heuristic the agent learns and acts with: ``haql`` when the user's switch
    ``heuristic`` is on (HAQL), None for a pure DQN. The one place this choice is made."""
    return haql if heuristic else None


def agent_name(heuristic: bool) -> str:
    """``haql`` for a run with the rulebook, ``dqn`` without (`AGENTS`)."""
    return next(name for name, steered in AGENTS.items() if steered == heuristic)


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
