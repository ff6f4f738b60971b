"""What `scripts/train.py` does with the config Hydra composed: check it, build the env,
train (the Anakin loop on the simulator, the asynchronous actor on clusters), and turn every
expected failure into one clear line and a non-zero exit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hmk8s.k8s.client import ClusterAccessError
from hmk8s.k8s.config import ClusterMapError
from hmk8s.sim.params import EnvConfigError
from hmk8s.train.checkpoint import CheckpointError
from hmk8s.train.config import ConfigError, TrainConfig, deployed_bonus, validate
from hmk8s.train.runlog import default_run_dir
from hmk8s.train.runner import run_training
from hmk8s.usecases import UseCaseError

SCHEMA_NAME = "train_schema"
EXIT_BAD_INPUT = 2


def register_schema() -> None:
    """Make the typed root config available to the defaults list as ``train_schema``."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)


def resolve_run_dir(cfg: TrainConfig, usecase: str) -> Path:
    """``resume`` names the run to continue; else ``run_dir``; else a fresh timestamped one."""
    if cfg.resume is not None:
        if cfg.run_dir is not None and Path(cfg.run_dir).resolve() != Path(cfg.resume).resolve():
            raise ConfigError(f"run_dir={cfg.run_dir} and resume={cfg.resume} name different runs")
        if not Path(cfg.resume).is_dir():
            raise CheckpointError(f"resume={cfg.resume}: no such run directory")
        return Path(cfg.resume)
    if cfg.run_dir is not None:
        return Path(cfg.run_dir)
    return default_run_dir(usecase, "haql" if cfg.heuristic else "dqn")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says on the backend Hydra chose; the run's summary."""
    choices = HydraConfig.get().runtime.choices
    usecase, backend = choices["usecase"], choices["backend"]
    typed: TrainConfig = OmegaConf.to_object(cfg)
    validate(typed)
    run_dir = resolve_run_dir(typed, usecase)
    if backend == "k8s":
        from hmk8s.train.k8s_run import run_async_training

        return run_async_training(cfg, run_dir=run_dir)
    if backend != "sim":
        raise ConfigError(f"backend={backend}: expected sim or k8s")
    from hmk8s.train.sim_eval import sim_setup

    config = OmegaConf.to_container(cfg, resolve=True)
    bonus = deployed_bonus(typed.haql if typed.heuristic else None)
    spec, evaluator = sim_setup(typed.usecase, config["env"], usecase, typed.eval.episodes, bonus)
    return run_training(typed, spec, config, run_dir, name=usecase, evaluator=evaluator)


def main(cfg: DictConfig) -> None:
    """Hydra task: train, or print why not and exit with status 2."""
    try:
        train(cfg)
    except (
        ConfigError,
        CheckpointError,
        EnvConfigError,
        UseCaseError,
        ClusterMapError,
        ClusterAccessError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
