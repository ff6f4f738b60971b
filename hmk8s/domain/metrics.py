"""Every metric name, defined once: what an env reports per step, what a training run logs,
what a step history records, and how a policy is scored over episodes (`summarise`).

A new metric is one entry here; the simulator spec, the actor/learner, ``metrics.csv``, the
history files, the training summary and the evaluation tables all read these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

#: Per-step env metrics (in every env's ``info`` and in the trainer's ``Timestep.metrics``),
#: each mapped to the name of its mean over steps in ``metrics.csv``.
STEP_METRICS: dict[str, str] = {
    "sla_violated": "sla_violation_rate",
    "pods": "mean_pods",
    "latency_ratio": "latency_ratio",
    "invalid": "invalid_rate",
}

#: Columns of a training run's ``metrics.csv``: one row per seed and logged chunk.
TRAIN_COLUMNS: tuple[str, ...] = (
    "seed",
    "env_steps",
    "updates",
    "episode_return",
    "episodes",
    *STEP_METRICS.values(),
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
    ("sla_violation_rate", "SLA violations", "{:.3f}"),
    ("mean_pods", "mean pods", "{:.2f}"),
    ("p95_latency_ratio", "p95 latency / SLA", "{:.2f}"),
    ("invalid_rate", "invalid actions", "{:.3f}"),
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
        "sla_violation_rate": float(records["sla_violated"].mean()),
        "mean_pods": float(records["pods"].mean()),
        "p95_latency_ratio": float(jnp.percentile(records["latency_ratio"], 95)),
        "invalid_rate": float(records["invalid"].mean()),
    }
