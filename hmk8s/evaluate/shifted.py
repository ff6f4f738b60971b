"""The policies on shifted loads: agents trained on a use case's own load, and the baselines,
scored on each scenario of `hmk8s.sim.scenarios` over the same held-out episodes, with the same
IQMs, bootstrap CIs and comparisons as on the default load."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from hmk8s.domain.metrics import POLICY_METRIC_NAMES, summarise
from hmk8s.domain.params import EnvParams
from hmk8s.policies.baselines import Policy
from hmk8s.policies.rollout import ROLLOUT_COMPILER_OPTIONS, rollout
from hmk8s.sim.env import ClusterEnv
from hmk8s.sim.scenarios import shifted

Scores = dict[str, float]


def _metrics(records: dict[str, jax.Array]) -> Scores:
    s = summarise(records)
    return {m: s[m] for m in POLICY_METRIC_NAMES}


def baseline_on_scenarios(
    env: ClusterEnv,
    params: EnvParams,
    policy: Policy,
    key: jax.Array,
    episodes: int,
    names: list[str],
    shifts: dict[str, jax.Array],
) -> dict[str, Scores]:
    """One policy's scores on each scenario (``shifts`` stacked in the order of ``names``), all
    scenarios in one compiled program."""
    run = jax.vmap(lambda s: rollout(env, shifted(params, s), policy, key, episodes))
    records = jax.jit(run, compiler_options=ROLLOUT_COMPILER_OPTIONS)(shifts)
    return {n: _metrics(jax.tree.map(lambda x, i=i: x[i], records)) for i, n in enumerate(names)}


def agent_on_scenarios(
    run: Callable[..., dict[str, jax.Array]],
    seed_params: Any,
    key: jax.Array,
    bonus: float,
    names: list[str],
    shifts: dict[str, jax.Array],
) -> dict[str, dict[str, np.ndarray]]:
    """Each seed's scores per scenario, ``{scenario: {metric: [seeds]}}`` (``run`` from
    `greedy_rollout`)."""
    records = run(seed_params, key, bonus, shifts)
    seeds = records["reward"].shape[1]
    out = {}
    for i, name in enumerate(names):
        each = [_metrics(jax.tree.map(lambda x, i=i, j=j: x[i, j], records)) for j in range(seeds)]
        out[name] = {m: np.array([s[m] for s in each]) for m in POLICY_METRIC_NAMES}
    return out


def scenario_results(
    names: list[str],
    agents: Mapping[str, dict[str, dict[str, np.ndarray]]],
    baselines: Mapping[str, dict[str, Scores]],
    summarise_agent: Callable[[dict[str, np.ndarray]], dict[str, dict[str, float]]],
    compare: Callable[[dict[str, dict[str, np.ndarray]], dict[str, Scores]], dict[str, Any]],
    verdict: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Per scenario: every policy's scores (agents: IQM and CI over seeds), the agents' seeds,
    the comparisons ``compare(per_seed, baseline scores)`` and ``verdict`` of that result."""
    out: dict[str, Any] = {}
    for name in names:
        per_seed = {a: agents[a][name] for a in agents}
        scores = {b: baselines[b][name] for b in baselines}
        result: dict[str, Any] = {
            "policies": {
                **{a: summarise_agent(s) for a, s in per_seed.items()},
                **{
                    b: {m: {"value": v, "low": v, "high": v} for m, v in s.items()}
                    for b, s in scores.items()
                },
            },
            "per_seed": {a: {m: v.tolist() for m, v in s.items()} for a, s in per_seed.items()},
            "comparisons": compare(per_seed, scores),
        }
        result["targets"] = verdict(result)
        out[name] = result
    return out
