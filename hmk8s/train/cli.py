"""What `scripts/train.py` does with the config Hydra composed: check it, build the env,
train (the Anakin loop on the simulator, the asynchronous actor on clusters), and turn every
expected failure into one clear line and a non-zero exit."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hmk8s.domain.settings import EnvConfigError
from hmk8s.domain.usecases import UseCaseError
from hmk8s.k8s.client import ClusterAccessError
from hmk8s.k8s.config import ClusterMapError
from hmk8s.shell.compose import MULTIRUN_FLAGS, compose, overrides_of, run_command
from hmk8s.shell.exit import EXIT_RUN_FAILED, fail, one_line_warning, refuse
from hmk8s.shell.run_dir import RunDirError
from hmk8s.train.actor_learner.actor import EnvLost
from hmk8s.train.actor_learner.k8s_run import CleanupError
from hmk8s.train.anakin.run import run_training
from hmk8s.train.cache import cache_root, enable_compile_cache, program_cache, score_cache
from hmk8s.train.checkpoint import CheckpointError
from hmk8s.train.config import ConfigError, TrainConfig, resolve
from hmk8s.train.distributed import TopologyError, initialize
from hmk8s.train.run import DiskFullError, NonFiniteError, resolve_run_dir
from hmk8s.train.stop import exit_status

SCHEMA_NAME = "train_schema"
#: Errors in what the user asked for: one line and exit code 2, before any work starts.
BAD_INPUT = (
    ConfigError,
    CheckpointError,
    EnvConfigError,
    UseCaseError,
    RunDirError,
    TopologyError,
    ClusterMapError,
    ClusterAccessError,
)
#: A run that started and then failed in a known way: one line and exit code 1.
RUN_FAILED = (NonFiniteError, CleanupError, EnvLost, DiskFullError)


def register_schema() -> None:
    """Make the typed root config available to the defaults list as ``train_schema``."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)


def sweep_job_dir(cfg: TrainConfig) -> str | None:
    """``run_dir``; in a Hydra multirun (``-m``) without one, the job's own directory under the
    sweep directory (``hydra.sweep.dir/hydra.sweep.subdir``), so parallel jobs never collide."""
    hydra_cfg = HydraConfig.get()
    if cfg.run_dir is not None or cfg.resume is not None or hydra_cfg.mode != RunMode.MULTIRUN:
        return cfg.run_dir
    return hydra_cfg.runtime.output_dir


def usecase_folder(sources: list[Any], choice: str) -> Path:
    """The folder of the YAML file Hydra read ``usecase=<choice>`` from: the first of its
    config sources (its search path, in order) that holds ``usecase/<choice>.yaml``."""
    for source in sources:
        folder = Path(source["path"]) / "usecase"
        if source["schema"] == "file" and (folder / f"{choice}.yaml").is_file():
            return folder
    raise UseCaseError(f"usecase={choice}: no YAML file found to resolve its trace path against")


def resolve_trace(cfg: DictConfig, choice: str) -> None:
    """Make a relative ``usecase.trace`` absolute, as docs/environment.md says: against the
    folder of the use case's YAML file, or the working directory when the command line set it."""
    trace = cfg.usecase.get("trace") if isinstance(cfg.usecase, DictConfig) else None
    if not isinstance(trace, str) or Path(trace).is_absolute():
        return
    hydra = HydraConfig.get()
    keys = (o.split("=", 1)[0].lstrip("+~") for o in hydra.overrides.task)
    if "usecase.trace" in keys:
        folder = Path.cwd()
    else:
        folder = usecase_folder(list(hydra.runtime.config_sources), choice)
    cfg.usecase.trace = str(folder / trace)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says on the backend Hydra chose; the run's summary."""
    usecase = HydraConfig.get().runtime.choices["usecase"]
    resolve_trace(cfg, usecase)
    typed: TrainConfig = OmegaConf.to_object(cfg)
    typed.run_dir = sweep_job_dir(typed)
    run = resolve(typed, usecase)
    cache = cache_root(typed.cache.dir)
    if typed.cache.compile:
        enable_compile_cache(cache)
    initialize(typed.distributed)
    run_dir = resolve_run_dir(typed, usecase)
    if run.backend == "k8s":
        if jax.process_count() > 1:
            raise ConfigError("backend=k8s trains in one process: distributed.* is for backend=sim")
        from hmk8s.train.actor_learner.k8s_run import run_async_training

        return run_async_training(run, run_dir=run_dir)
    from hmk8s.train.anakin.sim_eval import sim_setup

    scores = score_cache(cache, typed.cache.scores)
    programs = program_cache(cache, typed.cache.compile, run.saved())
    env, evaluator, programs = sim_setup(run, scores, programs)
    return run_training(run, env, run_dir, evaluator=evaluator, programs=programs)


def lost_process(err: Exception) -> str:
    """One line for a step the processes of a run take together that failed: most often
    because another process stopped (its peers then fail in their next collective)."""
    first = (str(err).splitlines() or [type(err).__name__])[0]
    return (
        f"process {jax.process_index()} of {jax.process_count()}: {first} (did another process "
        "stop? resume= on every process continues from the last checkpoint)"
    )


def main(cfg: DictConfig) -> None:
    """Hydra task: train, or print why not and exit with status 2."""
    warnings.formatwarning = one_line_warning
    try:
        summary = train(cfg)
    except BAD_INPUT as err:
        fail(err)
    except RUN_FAILED as err:
        fail(err, EXIT_RUN_FAILED)
    except jax.errors.JaxRuntimeError as err:
        if jax.process_count() == 1:
            raise
        # JAX's exit would wait at a shutdown barrier for the lost process, then abort
        os._exit(refuse(lost_process(err), EXIT_RUN_FAILED))
    if "signal" in summary:  # stopped cleanly by SIGINT / SIGTERM: say so in the exit status
        sys.exit(exit_status(signal.Signals[summary["signal"]]))


def refuse_used_sweep_dir(config_name: str, argv: list[str]) -> None:
    """A multirun (``-m``) into a sweep directory that already holds files is refused in one
    line and exit code 2, before Hydra rewrites its ``multirun.yaml`` and job folders."""
    if not any(arg in MULTIRUN_FLAGS for arg in argv):
        return
    overrides = overrides_of([a for a in argv if a not in MULTIRUN_FLAGS])
    if overrides is None:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
        sweep = Path(compose(config_name, overrides, hydra_config=True).hydra.sweep.dir)
    except Exception:  # the overrides are bad: Hydra says why, for the first job
        return
    if sweep.is_dir() and any(sweep.iterdir()):
        fail(
            f"{sweep} already holds a sweep: choose another hydra.sweep.dir (each job of a "
            "stopped sweep resumes with resume=<its run directory>)"
        )


def run(argv: list[str]) -> None:
    """``scripts/train.py argv``: the config composed once over the shipped configs (a sweep,
    ``-m``, by Hydra), then `main`."""
    register_schema()
    refuse_used_sweep_dir("config", argv)
    run_command("config", main, argv)


def entry() -> None:
    """``hmk8s-train`` and ``scripts/train.py``."""
    run(sys.argv[1:])
