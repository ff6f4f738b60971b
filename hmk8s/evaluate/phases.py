"""Where in an episode a policy gains or loses return, and what it did there, phase by phase.

The agent changes one thing a step (one pod added or removed, or one hop re-routed); `hpa_exact`
sets every Deployment at each sync. So beside return, SLA violations and pods, a phase says how
many pods a policy added or removed per step and, for an agent, what its actions were.
`scripts/scenario_steps.py` puts a trained run's seeds beside a baseline on one load with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmk8s import sim
from hmk8s.agents.config import deployed_bonus
from hmk8s.configs import shipped_value
from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE, ActionLayout
from hmk8s.domain.usecases import CONFIG_NAMES
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.policies.baselines import hpa_exact_policy
from hmk8s.policies.rollout import ROLLOUT_COMPILER_OPTIONS, rollout
from hmk8s.sim.scenarios import ScenarioError, check_scenarios, shifted, stacked
from hmk8s.train.anakin.loop import make_trainer
from hmk8s.train.anakin.sim_eval import greedy_rollout
from hmk8s.train.checkpoint import load_params
from hmk8s.train.config import ConfigError, TrainConfig

#: the agent's kinds of action, in the order of `action_mix`
KINDS = ("deploy", "remove", "reroute", "noop")
#: the use case's own load, as opposed to a scenario of `hmk8s.sim.scenarios`
DEFAULT_LOAD = "default"


def pods_changed(pods_per_cluster: np.ndarray) -> np.ndarray:
    """Pods added or removed per step, summed over clusters, from the pods on each cluster after
    every step [..., steps, clusters] of episodes that start with none (the `empty` start). A
    lower bound of the replica changes: a scale-up of one function and a scale-down of another on
    one cluster in the same step cancel. [..., steps]."""
    ppc = np.asarray(pods_per_cluster)
    before = np.concatenate([np.zeros_like(ppc[..., :1, :]), ppc[..., :-1, :]], axis=-2)
    return np.abs(ppc - before).sum(axis=-1)


def action_mix(actions: np.ndarray, layout: ActionLayout, steps: slice) -> dict[str, Any]:
    """What one-action-a-step actions [episodes, steps] did over ``steps``: the share of steps
    of each of `KINDS`; of the re-routes, the share that repeat the step before's action (the
    repeat finds the hop already there, so it changes nothing); of the deploys, the share of
    each config (`CONFIG_NAMES`; None when there is none)."""
    actions = np.asarray(actions)
    a = layout.decode(actions)
    noop, op, config = np.asarray(a.noop), np.asarray(a.op), np.asarray(a.config)
    kinds = {
        "deploy": ~noop & (op == OP_DEPLOY),
        "remove": ~noop & (op == OP_REMOVE),
        "reroute": ~noop & (op == OP_ASSIGN),
        "noop": noop,
    }
    previous = np.concatenate([np.full_like(actions[:, :1], -1), actions[:, :-1]], axis=1)
    reroutes = kinds["reroute"][:, steps]
    repeated = (actions == previous)[:, steps] & reroutes
    deploys = kinds["deploy"][:, steps]
    configs = config[:, steps][deploys]
    return {
        "share": {k: float(v[:, steps].mean()) for k, v in kinds.items()},
        "repeated_reroutes": float(repeated.sum() / reroutes.sum()) if reroutes.any() else None,
        "deployed_configs": (
            {name: float((configs == i).mean()) for i, name in enumerate(CONFIG_NAMES)}
            if configs.size
            else None
        ),
    }


def phase_scores(
    records: dict[str, np.ndarray],
    bounds: Sequence[int],
    max_pods: int,
    layout: ActionLayout | None = None,
) -> list[dict[str, Any]]:
    """One policy's rollout records [episodes, steps, ...] per phase, steps [b_i, b_i+1) for
    consecutive ``bounds``: the return over the phase (summed over its steps, mean over
    episodes), its SLA violation rate, mean pods, the share of steps with a cluster at its
    ``max_pods`` (where only a bigger config or another cluster adds capacity), pods added or
    removed per step and the share of steps that change more than one pod; with ``layout``, the
    `action_mix` of a policy that acts one action a step."""
    changed = pods_changed(records["pods_per_cluster"])
    at_cap = (np.asarray(records["pods_per_cluster"]) >= max_pods).any(axis=-1)
    rows = []
    for start, end in pairwise(bounds):
        steps = slice(start, end)
        row: dict[str, Any] = {
            "steps": [int(start), int(end)],
            "return": float(np.asarray(records["reward"])[:, steps].sum(axis=1).mean()),
            "sla_violation_rate": float(np.asarray(records["sla_violated"])[:, steps].mean()),
            "mean_pods": float(np.asarray(records["pods"])[:, steps].mean()),
            "steps_at_cap": float(at_cap[:, steps].mean()),
            "pods_changed": float(changed[:, steps].mean()),
            "steps_changing_more_than_one": float((changed[:, steps] > 1).mean()),
        }
        if layout is not None:
            row["actions"] = action_mix(records["action"], layout, steps)
        rows.append(row)
    return rows


def run_phases(
    run_dir: str | Path,
    load: str,
    hpa_knobs: dict[str, float],
    bounds: Sequence[int],
    xi: float | None = None,
    episodes: int = 32,
    key: int | None = None,
) -> dict[str, Any]:
    """A training run's greedy seeds (its last checkpoint; HAQL at weight ``xi``, default its
    deployed one) and `hpa_exact` with ``hpa_knobs`` on ``load`` ("default" or a scenario), on
    the evaluation's held-out episodes of ``key``: every policy's `phase_scores` and whole-episode
    scores (``key`` None: the shipped `evaluate.key`). `ConfigError` for an unknown load or a run
    that does not start `empty`."""
    key = shipped_value("evaluate.key", "evaluate") if key is None else key
    step, config, seed_params = load_params(run_dir)
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), config))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{run_dir}: not a training run's config ({err})") from err
    if cfg.env.start != "empty":
        raise ConfigError(
            f"{run_dir}: env.start={cfg.env.start}; pods are counted from an empty start"
        )
    if load != DEFAULT_LOAD:
        try:
            check_scenarios([load])
        except ScenarioError as err:
            raise ConfigError(str(err)) from err
    env_cfg = {k: getattr(cfg.env, k) for k in ("noop", "start", "episode_steps", "encoder")}
    env, params = sim.make(dict(config["usecase"]), env_cfg, name=config["usecase"]["name"])
    if bounds[0] != 0 or list(bounds) != sorted(set(bounds)) or bounds[-1] > params.episode_steps:
        raise ConfigError(
            f"phase bounds {list(bounds)} must rise from 0 to at most {params.episode_steps}"
        )
    haql = cfg.haql if cfg.heuristic else None
    bonus = deployed_bonus(haql) if xi is None or haql is None else xi * haql.eta
    trainer = make_trainer(
        sim_env_spec(env, params, cfg.env.encoder), cfg.agent, cfg.num_envs, haql
    )
    run = greedy_rollout(env, params, trainer.network, episodes, cfg.env.encoder)
    eval_key = jax.random.split(jax.random.PRNGKey(key))[1]
    on = params
    if load == DEFAULT_LOAD:
        agents = run(seed_params, eval_key, bonus)
    else:
        shift = stacked(params, [load])
        on = shifted(params, jax.tree.map(lambda x: x[0], shift))
        agents = jax.tree.map(lambda x: x[0], run(seed_params, eval_key, bonus, shift))
    hpa = jax.jit(
        lambda k: rollout(env, on, hpa_exact_policy(**hpa_knobs), k, episodes),
        compiler_options=ROLLOUT_COMPILER_OPTIONS,
    )(eval_key)
    agents, hpa = jax.device_get(agents), jax.device_get(hpa)
    whole = [0, params.episode_steps]
    seeds = agents["reward"].shape[0]
    policies = {"hpa_exact": (hpa, None)} | {
        f"seed {i}": (jax.tree.map(lambda x, i=i: x[i], agents), params.layout)
        for i in range(seeds)
    }
    return {
        "run": str(run_dir),
        "step": int(step),
        "load": load,
        "bonus": float(bonus),
        "hpa_exact": hpa_knobs,
        "episodes": episodes,
        "policies": {
            name: {
                "episode": phase_scores(records, whole, params.max_pods, layout)[0],
                "phases": phase_scores(records, bounds, params.max_pods, layout),
            }
            for name, (records, layout) in policies.items()
        },
    }
