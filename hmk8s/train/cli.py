"""What `scripts/train.py` does with the config Hydra composed: check it, build the env,
train (the Anakin loop on the simulator, the asynchronous actor on clusters), and turn every
expected failure into one clear line and a non-zero exit."""

from __future__ import annotations

import signal
import sys
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hmk8s.agents.config import deployed_bonus
from hmk8s.configs import SEARCH_PATH
from hmk8s.k8s.client import ClusterAccessError
from hmk8s.k8s.config import ClusterMapError
from hmk8s.sim.params import EnvConfigError
from hmk8s.train.actor_learner.k8s_run import CleanupError
from hmk8s.train.anakin.run import run_training
from hmk8s.train.checkpoint import CheckpointError
from hmk8s.train.config import ConfigError, TrainConfig, validate
from hmk8s.train.run import NonFiniteError, RunDirError, resolve_run_dir
from hmk8s.usecases import UseCaseError

SCHEMA_NAME = "train_schema"
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
#: Errors in what the user asked for: one line and exit code 2, before any work starts.
BAD_INPUT = (
    ConfigError,
    CheckpointError,
    EnvConfigError,
    UseCaseError,
    RunDirError,
    ClusterMapError,
    ClusterAccessError,
)
#: A run that started and then failed in a known way: one line and exit code 1.
RUN_FAILED = (NonFiniteError, CleanupError)


def register_schema() -> None:
    """Make the typed root config available to the defaults list as ``train_schema``."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says on the backend Hydra chose; the run's summary."""
    choices = HydraConfig.get().runtime.choices
    usecase, backend = choices["usecase"], choices["backend"]
    typed: TrainConfig = OmegaConf.to_object(cfg)
    validate(typed)
    run_dir = resolve_run_dir(typed, usecase)
    if backend == "k8s":
        from hmk8s.train.actor_learner.k8s_run import run_async_training

        return run_async_training(cfg, run_dir=run_dir)
    if backend != "sim":
        raise ConfigError(f"backend={backend}: expected sim or k8s")
    from hmk8s.train.anakin.sim_eval import sim_setup

    config = OmegaConf.to_container(cfg, resolve=True)
    bonus = deployed_bonus(typed.haql if typed.heuristic else None)
    spec, evaluator = sim_setup(typed.usecase, config["env"], usecase, typed.eval.episodes, bonus)
    return run_training(typed, spec, config, run_dir, name=usecase, evaluator=evaluator)


def main(cfg: DictConfig) -> None:
    """Hydra task: train, or print why not and exit with status 2."""
    try:
        summary = train(cfg)
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except RUN_FAILED as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_RUN_FAILED)
    if "signal" in summary:  # stopped cleanly by SIGTERM: say so in the exit status
        sys.exit(128 + signal.Signals[summary["signal"]].value)


@hydra.main(config_path=SEARCH_PATH, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    main(cfg)


def entry() -> None:
    """``hmk8s-train`` and ``scripts/train.py``: Hydra over the shipped configs, then `main`."""
    register_schema()
    _hydra_main()
