"""Every metric name, defined once: what an env reports per step, what a training run logs,
what a step history records, and how a policy is scored over episodes (`summarise`).

A new step metric is one `STEP_METRICS` entry: the envs' ``info``, the simulator spec, the
actor/learner, ``metrics.csv``, the history files, the rollout records, `summarise` and the
evaluation tables all iterate over it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class StepMetric(NamedTuple):
    """One per-step metric: how a step's outcome gives it, and how each consumer names it.

    compute:  (latency_ratio, pods, invalid) of a step -> the metric (a traced scalar)
    host:     the Python type `info` carries it as in the gymnasium envs
    column:   the name of its mean over steps in ``metrics.csv``
    score:    the name of the policy score over episodes, with its table label and format
    reduce:   [episodes, steps] values -> that score
    """

    compute: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    host: type
    column: str
    score: str
    label: str
    fmt: str
    reduce: Callable[[jax.Array], jax.Array]


def _p95(values: jax.Array) -> jax.Array:
    return jnp.percentile(values, 95)


#: The per-step metrics, in every env's ``info``, the trainer's ``Timestep.metrics``, the
#: rollout records and the policy scores, in this order.
STEP_METRICS: dict[str, StepMetric] = {
    "sla_violated": StepMetric(
        lambda ratio, pods, invalid: ratio > 1.0,
        bool,
        "sla_violation_rate",
        "sla_violation_rate",
        "SLA violations",
        "{:.3f}",
        jnp.mean,
    ),
    "pods": StepMetric(
        lambda ratio, pods, invalid: pods,
        int,
        "mean_pods",
        "mean_pods",
        "mean pods",
        "{:.2f}",
        jnp.mean,
    ),
    "latency_ratio": StepMetric(
        lambda ratio, pods, invalid: ratio,
        float,
        "latency_ratio",
        "p95_latency_ratio",
        "p95 latency / SLA",
        "{:.2f}",
        _p95,
    ),
    "invalid": StepMetric(
        lambda ratio, pods, invalid: invalid,
        bool,
        "invalid_rate",
        "invalid_rate",
        "invalid actions",
        "{:.3f}",
        jnp.mean,
    ),
}


def step_metrics(latency_ratio: jax.Array, pods: jax.Array, invalid: jax.Array) -> dict:
    """Every `STEP_METRICS` entry of one step, as traced values."""
    return {name: m.compute(latency_ratio, pods, invalid) for name, m in STEP_METRICS.items()}


def host_metrics(info: Mapping[str, Any]) -> dict[str, Any]:
    """The step metrics of ``info`` as the Python values a gymnasium ``info`` carries."""
    return {name: m.host(info[name]) for name, m in STEP_METRICS.items()}


#: Columns of a training run's ``metrics.csv``: one row per seed and logged chunk.
TRAIN_COLUMNS: tuple[str, ...] = (
    "seed",
    "env_steps",
    "updates",
    "episode_return",
    "episodes",
    *(m.column for m in STEP_METRICS.values()),
    "loss",
    "epsilon",
    "xi",
    "sps",
)

#: Columns of an actor/learner run's ``history/env<i>.csv``: one row per env step.
HISTORY_COLUMNS: tuple[str, ...] = (
    "wall_time",
    "env",
    "env_step",
    "episode",
    "t",
    "action",
    "action_name",
    "reward",
    "episode_return",
    "terminated",
    "truncated",
    *STEP_METRICS,
    "api_errors",
    "assumed",  # readings the k8s backend filled in (pods without CPU, proxies without latency)
    "hint",
    "step_s",
    "state",
)

#: How a policy is scored over whole episodes: name, table label, number format.
POLICY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("return", "episode return", "{:.1f}"),
    *((m.score, m.label, m.fmt) for m in STEP_METRICS.values()),
)
POLICY_METRIC_NAMES: tuple[str, ...] = tuple(name for name, _, _ in POLICY_METRICS)


def summarise(records: Mapping[str, jax.Array]) -> dict[str, Any]:
    """A policy's scores from a rollout's records ([episodes, steps] arrays of ``reward`` and
    the step metrics): every `POLICY_METRIC_NAMES` entry, plus the returns' spread."""
    returns = records["reward"].sum(axis=1)
    return {
        "return": float(returns.mean()),
        "return_std": float(returns.std()),
        "episode_returns": [float(r) for r in returns],
        **{m.score: float(m.reduce(records[name])) for name, m in STEP_METRICS.items()},
    }
