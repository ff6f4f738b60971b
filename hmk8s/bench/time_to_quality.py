"""Time to quality: wall-clock seconds and env steps until an agent's greedy return first reaches
`hpa`'s, and `hpa`'s + 10, on the same held-out episodes.

Each config is the training config `scripts/train.py` would compose from the same overrides.
The agent trains in the loop of `scripts/train.py` (`hmk8s.evaluate.experiment.train_agent`,
`hmk8s.train.anakin.run.run_chunks`) for the same env steps, and is scored by the same greedy
evaluator (`greedy_rollout`) after every chunk of about ``every`` env steps (the last one
shorter when they do not divide the run) on the episodes of `scripts/train.py`'s final
evaluation (key ``seed + 1``, where `hpa` is scored too). HAQL is scored as it acts at that
step, with the rulebook weighted by ``xi_t``. Seconds count the
training chunks only (compilation included, curve evaluations excluded); every config runs
in the same process, so their ratios share the machine's state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmk8s import sim
from hmk8s.agents.config import AGENTS, heuristic_bonus
from hmk8s.domain.usecases import available_usecases
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.evaluate import learning, stats
from hmk8s.evaluate.experiment import AgentRun, seed_returns, train_agent
from hmk8s.policies.baselines import hpa_policy
from hmk8s.policies.rollout import evaluate_policy
from hmk8s.shell.compose import compose
from hmk8s.train.anakin.loop import make_trainer
from hmk8s.train.anakin.sim_eval import greedy_rollout
from hmk8s.train.cli import register_schema
from hmk8s.train.config import ConfigError, RunSpec, resolve

MARGINS = (0.0, 10.0)


@dataclass(frozen=True)
class Variant:
    """A named config: Hydra overrides over the shipped `config.yaml`."""

    name: str
    overrides: tuple[str, ...]


def parse_variant(text: str) -> Variant:
    """``NAME=OVERRIDE OVERRIDE ...`` (the overrides space-separated, possibly none)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--config {text!r}: expected NAME=OVERRIDES, e.g. fast=total_steps=1e5")
    return Variant(name.strip(), tuple(rest.split()))


def check_usecases(usecases: Sequence[str]) -> None:
    """Refuse a use case that has no file under `hmk8s/configs/usecase/`."""
    known = sorted(available_usecases())
    bad = sorted(set(usecases) - set(known))
    if bad:
        raise ConfigError(f"unknown use case(s) {bad}: expected some of {known}")


def check_names(variants: Sequence[Variant]) -> None:
    """Refuse two configs of the same name (their results could not be told apart)."""
    names = [v.name for v in variants]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"give one or more configs with different names, got {names}")


def compose_config(usecase: str, heuristic: bool, overrides: Sequence[str]) -> RunSpec:
    """The `RunSpec` of ``scripts/train.py usecase=... heuristic=... overrides``."""
    register_schema()
    args = [f"usecase={usecase}", f"heuristic={str(heuristic).lower()}", *overrides]
    try:
        cfg = OmegaConf.to_object(compose("config", args))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{' '.join(args)}: {err}".splitlines()[0]) from err
    return resolve(cfg, usecase)


def first_reach(steps: np.ndarray, seconds: np.ndarray, curve: np.ndarray, level: float) -> dict:
    """Env steps and seconds at which ``curve`` first reaches ``level`` (interpolated linearly
    between curve points, as `learning.time_to_threshold`); ``None`` for both if it never does."""
    at_steps = learning.time_to_threshold(steps, curve, level)
    if not math.isfinite(at_steps):
        return {"steps": None, "seconds": None}
    return {"steps": at_steps, "seconds": learning.time_to_threshold(seconds, curve, level)}


def holds_from(steps: np.ndarray, seconds: np.ndarray, curve: np.ndarray, level: float) -> dict:
    """Env steps and seconds of the first curve point from which ``curve`` stays at or above
    ``level`` to the end; ``None`` for both if its last point is below. A first crossing says
    when an agent can first be that good; a single-seed curve can fall back after it."""
    below = np.flatnonzero(np.asarray(curve) < level)
    first = 0 if below.size == 0 else int(below[-1]) + 1
    if first == len(curve):
        return {"steps": None, "seconds": None}
    return {"steps": float(steps[first]), "seconds": float(seconds[first])}


def measure(run: RunSpec, every: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``run`` and read its greedy curve: hpa's return on the same episodes, the curve
    (IQM over ``cfg.seeds``), when it first reaches hpa and hpa + 10, and from when it stays
    there."""
    cfg, haql = run.config, run.haql
    env, params = sim.make(run.usecase, dataclasses.asdict(cfg.env))
    trainer = make_trainer(
        sim_env_spec(env, params, cfg.env.encoder), cfg.agent, cfg.num_envs, haql
    )
    episodes = cfg.eval.episodes
    key = jax.random.PRNGKey(cfg.seed + 1)
    hpa = float(evaluate_policy(env, params, hpa_policy(), key, episodes)["return"])
    run = greedy_rollout(env, params, trainer.network, episodes, cfg.env.encoder)

    def curve(p: Any, steps: int) -> np.ndarray:
        return seed_returns(run, p, key, float(heuristic_bonus(haql, steps)))

    points = max(1, round(cfg.total_steps / every))
    result: AgentRun = train_agent(trainer, cfg, points, curve, log)
    iqm_curve = np.array([stats.iqm(col) for col in result.curves.T])
    return {
        "usecase": run.name,
        "agent": "dqn" if haql is None else "haql",
        "seeds": cfg.seeds,
        "hpa": hpa,
        "env_steps": int(result.steps[-1]),
        "updates": result.updates,
        "train_seconds": float(result.train_seconds[-1]),
        "final_return": float(iqm_curve[-1]),
        "reach": {
            f"hpa+{margin:g}": first_reach(
                result.steps, result.train_seconds, iqm_curve, hpa + margin
            )
            for margin in MARGINS
        },
        "holds": {
            f"hpa+{margin:g}": holds_from(
                result.steps, result.train_seconds, iqm_curve, hpa + margin
            )
            for margin in MARGINS
        },
        "curve": {
            "steps": result.steps.tolist(),
            "seconds": result.train_seconds.tolist(),
            "return": iqm_curve.tolist(),
        },
    }


def time_to_quality(
    usecases: Sequence[str],
    agents: Sequence[str],
    variants: Sequence[Variant],
    every: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """`measure` for every use case, agent and config, in that order; every config is composed
    and checked before the first one trains, so a bad one fails at once."""
    unknown = sorted(set(agents) - set(AGENTS))
    if unknown:
        raise ConfigError(f"unknown agent(s) {unknown}: expected some of {sorted(AGENTS)}")
    check_usecases(usecases)
    check_names(variants)
    if every <= 0:
        raise ConfigError(f"--every must be > 0, got {every}")
    plan = [
        (u, a, v, compose_config(u, AGENTS[a], v.overrides))
        for u in usecases
        for a in agents
        for v in variants
    ]
    rows = []
    for usecase, agent, variant, run in plan:
        log(f"{usecase} {agent} {variant.name}: {run.config.total_steps} env steps")
        rows.append({"config": variant.name, **measure(run, every, log)})
    return rows
