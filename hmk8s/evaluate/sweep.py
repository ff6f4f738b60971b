"""A training sweep's runs as the evaluation's agents, instead of training them in-process.

``scripts/train.py -m seed=0,1,2 heuristic=false,true ...`` leaves one run directory per job
under its sweep directory. `read_sweep` finds them, groups them by use case and agent (DQN,
HAQL) and refuses a group whose runs disagree on a setting that matters; `SweepGroup.agent_run`
then gives what in-process training would have: the greedy learning curve at every checkpoint
the runs kept (and at step 0, from each seed's initial weights, which the seed alone decides)
and the last checkpoint's weights, seeds in order.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmk8s.agents.config import AGENTS, agent_name
from hmk8s.evaluate.experiment import AgentRun
from hmk8s.train.anakin.loop import Trainer, seed_keys
from hmk8s.train.checkpoint import Checkpointer, run_checkpoints
from hmk8s.train.config import ConfigError, TrainConfig, config_differences

#: Settings each run of a group may have its own way: its seed, where and how it ran, what it
#: logged and kept, how it was evaluated (the evaluation decides ``haql.deployed_xi``).
PER_RUN = (
    "seed",
    "run_dir",
    "resume",
    "checkpoint",
    "log",
    "eval",
    "devices",
    "seed_devices",
    "distributed",
    "haql.deployed_xi",
)
#: What tells a use case's DQN runs from its HAQL runs.
PER_AGENT = ("heuristic", "haql")

Curve = Callable[[Any, int], np.ndarray]


@dataclass(frozen=True)
class SweepRun:
    """One job of the sweep: its directory, config and summary."""

    directory: Path
    config: dict[str, Any]
    summary: dict[str, Any]

    @property
    def usecase(self) -> str:
        return str(self.summary["usecase"])

    @property
    def agent(self) -> str:
        return agent_name(bool(self.config.get("heuristic")))

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def seeds(self) -> int:
        return int(self.config["seeds"])


@dataclass(frozen=True)
class SweepGroup:
    """One use case's runs: ``runs[agent]`` in seed order, the training config they share
    (``seeds`` is their total) and the steps of the checkpoints they all kept."""

    runs: dict[str, list[SweepRun]]
    cfg: TrainConfig
    steps: list[int]

    @property
    def mapping(self) -> dict[str, Any]:
        """The use case the runs trained on, as their config holds it."""
        return dict(self.runs["dqn"][0].config["usecase"])

    def agent_run(self, agent: str, trainer: Trainer, curve: Curve) -> AgentRun:
        """The runs of ``agent`` as one `AgentRun`; ``curve(seed-stacked params, env steps)``
        scores them at step 0 and at every checkpoint step."""
        runs, steps = self.runs[agent], self.steps
        keys = jnp.concatenate([seed_keys(run.seed, run.seeds) for run in runs])
        params = jax.jit(jax.vmap(trainer.init))(keys).learner.params
        values = [curve(params, 0)]
        with contextlib.ExitStack() as stack:
            checkpoints = [stack.enter_context(_opened(run.directory)) for run in runs]
            for step in steps:
                params = _stacked([_params_at(c, step) for c in checkpoints])
                values.append(curve(params, step))
        return AgentRun(
            steps=np.array([0, *steps]),
            curves=np.stack(values, axis=1),
            params=params,
            updates=int(runs[0].summary["updates"]),
            seconds=float(sum(run.summary["wall_seconds"] for run in runs)),
            train_seconds=sum(_train_seconds(run, [0, *steps]) for run in runs),
        )


def read_sweep(
    sweep_dir: Path, usecases: list[str], deployed_xi: float | None
) -> dict[str, SweepGroup]:
    """The groups of ``usecases`` among the runs under ``sweep_dir``; `ConfigError` if a use
    case or an agent has no run, or a group's runs disagree. ``deployed_xi``: the evaluation's
    ``haql.deployed_xi``, which replaces the runs'."""
    runs = find_runs(sweep_dir)
    found: dict[str, dict[str, list[SweepRun]]] = {}
    for run in runs:
        found.setdefault(run.usecase, {}).setdefault(run.agent, []).append(run)
    inventory = ", ".join(
        f"{u}/{a} x{len(rs)}" for u, agents in sorted(found.items()) for a, rs in agents.items()
    )
    groups = {}
    for usecase in usecases:
        for agent in AGENTS:
            if not found.get(usecase, {}).get(agent):
                raise ConfigError(
                    f"runs_from={sweep_dir}: no {agent} run of use case {usecase} "
                    f"(found {inventory})"
                )
        groups[usecase] = _group(found[usecase], deployed_xi)
    return groups


def find_runs(sweep_dir: Path) -> list[SweepRun]:
    """Every run directory under ``sweep_dir`` (one with a ``config.yaml``), all finished."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"runs_from={sweep_dir}: no such directory")
    runs = []
    for config_file in sorted(sweep_dir.rglob("config.yaml")):
        directory = config_file.parent
        summary = directory / "summary.json"
        if not summary.is_file():
            raise ConfigError(f"{directory}: no summary.json (the run did not finish)")
        if not (directory / "checkpoints").is_dir():
            raise ConfigError(f"{directory}: no checkpoints (checkpoint.enabled=false)")
        config = yaml.safe_load(config_file.read_text())
        if config.get("backend", {}).get("name") != "sim":
            raise ConfigError(f"{directory}: not a simulator run (the evaluation runs on sim)")
        runs.append(SweepRun(directory, config, yaml.safe_load(summary.read_text())))
    if not runs:
        raise ConfigError(f"runs_from={sweep_dir}: no run directory (with config.yaml) in it")
    return runs


def _group(agents: dict[str, list[SweepRun]], deployed_xi: float | None) -> SweepGroup:
    """Check that ``agents``' runs agree and cover distinct seeds; the group."""
    for runs in agents.values():
        runs.sort(key=lambda run: run.seed)
        for run in runs[1:]:
            _check_agree(runs[0], run, PER_RUN)
        starts = [run.seed for run in runs]
        if len(set(starts)) < len(starts):
            twice = next(s for s in starts if starts.count(s) > 1)
            raise ConfigError(f"two {runs[0].agent} runs of {runs[0].usecase} train seed {twice}")
    dqn, haql = agents["dqn"][0], agents["haql"][0]
    _check_agree(dqn, haql, PER_RUN + PER_AGENT)
    seeds = {a: [(run.seed, run.seeds) for run in agents[a]] for a in AGENTS}
    if seeds["dqn"] != seeds["haql"]:
        raise ConfigError(
            f"the DQN and HAQL runs of {dqn.usecase} train different seeds ((seed, seeds): "
            f"{seeds['dqn']} vs {seeds['haql']})"
        )
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), haql.config))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{haql.directory}/config.yaml: {err}") from err
    cfg.seeds = sum(run.seeds for run in agents["haql"])
    cfg.haql.deployed_xi = deployed_xi
    runs = [run for a in AGENTS for run in agents[a]]
    return SweepGroup(runs={a: agents[a] for a in AGENTS}, cfg=cfg, steps=_common_steps(runs))


def _check_agree(a: SweepRun, b: SweepRun, ignore: tuple[str, ...]) -> None:
    differences = config_differences(a.config, b.config, ignore)
    if differences:
        listed = "; ".join(f"{key}: {x!r} vs {y!r}" for key, x, y in differences[:3])
        raise ConfigError(
            f"the runs {a.directory} and {b.directory} of one use case differ in {listed} "
            f"(they may differ only in {', '.join(PER_RUN)}, and DQN from HAQL in "
            f"{', '.join(PER_AGENT)})"
        )


@contextlib.contextmanager
def _opened(run_dir: Path) -> Iterator[Checkpointer]:
    """The run's checkpoints, open for reading while the block runs."""
    checkpoints = run_checkpoints(run_dir)
    try:
        yield checkpoints
    finally:
        checkpoints.close()


def _common_steps(runs: list[SweepRun]) -> list[int]:
    """The checkpoint steps every run kept (the same for all, else `ConfigError`)."""
    steps = []
    for run in runs:
        with _opened(run.directory) as checkpoints:
            steps.append(checkpoints.steps())
    for run, kept in zip(runs, steps, strict=True):
        if not kept:
            raise ConfigError(f"{run.directory}: no checkpoint")
        if kept != steps[0]:
            raise ConfigError(
                f"the runs {runs[0].directory} and {run.directory} kept checkpoints at "
                f"different steps ({steps[0]} vs {kept})"
            )
    return steps[0]


def _params_at(checkpoints: Checkpointer, step: int) -> Any:
    got, _, params = checkpoints.read_params(step)
    if got != step:
        raise ConfigError(f"{checkpoints.directory}: step {step} is damaged")
    return params


def _stacked(per_run: list[Any]) -> Any:
    """Seed-stacked parameters of several runs as one stack, runs in order."""
    return jax.tree.map(lambda *xs: np.concatenate(xs), *per_run)


def _train_seconds(run: SweepRun, steps: list[int]) -> np.ndarray:
    """Seconds the run spent in training chunks until each of ``steps`` (from its metrics.csv:
    a chunk's env steps over all seeds, divided by its steps per second)."""
    with (run.directory / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["seed"] == "0"]
    done, seconds, at = 0, 0.0, {0: 0.0}
    for row in rows:
        step = int(row["env_steps"])
        seconds += (step - done) * run.seeds / float(row["sps"])
        done, at[step] = step, seconds
    return np.array([at[step] for step in steps])
