"""What `scripts/evaluate.py` does with the config Hydra composed: for each use case asked for,
train DQN and HAQL over seeds (or take their runs from a sweep directory, ``runs_from``),
evaluate them and the baselines, and write results.json, results.md and the figures into the
run directory."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import jax
import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hmk8s.configs import default
from hmk8s.domain.settings import EnvConfigError
from hmk8s.domain.usecases import CONFIG_DIR, UseCaseError, available_usecases
from hmk8s.evaluate.experiment import EvaluateConfig, Stopped, evaluate_usecase, usecase_config
from hmk8s.evaluate.report import render_markdown, write_figures
from hmk8s.evaluate.sweep import read_sweep
from hmk8s.shell.compose import run_command
from hmk8s.shell.exit import fail
from hmk8s.shell.run_dir import RunDirError, claim_run_dir, holds_files, timestamped
from hmk8s.sim.scenarios import ScenarioError, check_scenarios
from hmk8s.train.cache import cache_root, enable_compile_cache, score_cache
from hmk8s.train.checkpoint import CheckpointError
from hmk8s.train.cli import SCHEMA_NAME
from hmk8s.train.config import ConfigError, TrainConfig, config_differences, resolve
from hmk8s.train.stop import exit_status, forget, requested, signal_name, stop_on_signals

ALL = "all"
#: The settings an evaluation ran with, saved beside its results (a resume must match them).
CONFIG_FILE = "config.yaml"
#: What may change when a stopped evaluation is resumed: where it is and what it prints.
EVALUATION_RESUME_SAFE = ("run_dir", "resume", "cache", "log")


@dataclass
class EvaluateRoot(TrainConfig):
    """The training config plus the ``evaluate`` block; `configs/config.yaml` unchanged.
    ``runs_from``: a training sweep's directory whose runs are evaluated instead of training
    (their own configs then decide how they trained)."""

    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    runs_from: str | None = default("runs_from", root="evaluate")


def register_schema() -> None:
    """Type the root config (the ``train_schema`` entry of `configs/config.yaml`) as
    `EvaluateRoot`, so the training tree is reused with one more block, and offer
    ``usecase=all``."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=EvaluateRoot)
    store.store(group="usecase", name=ALL, node={ALL: list(available_usecases())})


def usecases(choice: str, mapping: Any) -> dict[str, dict[str, Any]]:
    """Use-case mappings by name: the chosen one (with any command-line changes), or each
    shipped use case (`available_usecases`) as its YAML file defines it. ``usecase=all`` is
    registered in Python (`register_schema`), not as a file under `configs/usecase/`, which
    holds only real use cases."""
    if choice != ALL:
        return {choice: OmegaConf.to_container(mapping, resolve=True)}
    return {n: yaml.safe_load((CONFIG_DIR / f"{n}.yaml").read_text()) for n in mapping["all"]}


def device() -> str:
    """The machine the run used, for the results page: JAX's device, cores and CPU model."""
    dev = jax.devices()[0]
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    model = models[0] if models else platform.processor() or platform.machine()
    return f"JAX {dev.platform} ({dev.device_kind}), {os.cpu_count()} cores, {model}"


def run(cfg: DictConfig) -> Path:
    """Evaluate every use case asked for; the run directory."""
    choices = HydraConfig.get().runtime.choices
    choice = choices["usecase"]
    if choices["backend"] != "sim":
        raise ConfigError(f"backend={choices['backend']}: the evaluation runs on the simulator")
    typed: EvaluateRoot = OmegaConf.to_object(cfg)
    resolve(dataclasses.replace(typed, usecase=None))
    if any(xi < 0 for xi in typed.evaluate.deployed_xi_grid):
        grid = typed.evaluate.deployed_xi_grid
        raise ConfigError(f"evaluate.deployed_xi_grid must hold weights >= 0, got {grid}")
    for block in ("agent_by_usecase", "budget_by_usecase"):
        for name in getattr(typed.evaluate, block):
            if name not in available_usecases():
                raise ConfigError(
                    f"evaluate.{block}: unknown use case {name!r} "
                    f"(one of {', '.join(available_usecases())})"
                )
            resolve(usecase_config(dataclasses.replace(typed, usecase=None), name, typed.evaluate))
    try:
        check_scenarios(typed.evaluate.scenarios)
    except ScenarioError as err:
        raise ConfigError(f"evaluate.scenarios: {err}") from err
    chosen = usecases(choice, cfg.usecase)
    sweep = None
    if typed.runs_from is not None:
        sweep = read_sweep(Path(typed.runs_from), list(chosen), typed.haql.deployed_xi)
    cache = cache_root(typed.cache.dir)
    if typed.cache.compile:
        enable_compile_cache(cache)
    scores = score_cache(cache, typed.cache.scores)
    config = OmegaConf.to_container(cfg, resolve=True)
    forget()
    with evaluation_dir(typed, choice) as out, stop_on_signals():
        results = resumed_results(out, config) if typed.resume is not None else {}
        (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        start = time.perf_counter()
        for name, mapping in chosen.items():
            if name in results:
                print(f"{name}: kept from the stopped evaluation")
                continue
            try:
                if sweep is None:
                    result, data = evaluate_usecase(
                        name, mapping, typed, typed.evaluate, log=progress, scores=scores
                    )
                else:
                    # the sweep trained the agents: they are read, one after the other
                    group = sweep[name]
                    ev = dataclasses.replace(
                        typed.evaluate,
                        agent_by_usecase={},
                        budget_by_usecase={},
                        train_together=False,
                    )
                    result, data = evaluate_usecase(
                        name,
                        group.mapping,
                        group.cfg,
                        ev,
                        log=progress,
                        source=group.agent_run,
                        scores=scores,
                    )
            except Stopped:
                break
            results[name] = result
            write_figures(out, name, result, data)
            write_results(out, results, {"complete": False})
            if requested() is not None:
                break
        meta = {
            "command": "python scripts/evaluate.py " + " ".join(sys.argv[1:]),
            "device": device(),
            "wall_seconds": time.perf_counter() - start,
            **({} if sweep is None else {"runs_from": str(Path(typed.runs_from).resolve())}),
        }
        if requested() is not None:
            stopped(out, results, meta, [n for n in chosen if n not in results])
        write_results(out, results, meta)
        (out / "results.md").write_text(render_markdown(results, meta))
    print(f"wrote {out}/results.md ({meta['wall_seconds'] / 60:.1f} min)")
    return out


def progress(line: str) -> None:
    """One line of the evaluation's progress, at once (also into a pipe or a file)."""
    print(line, flush=True)


def evaluation_dir(typed: EvaluateRoot, choice: str) -> AbstractContextManager[Path]:
    """``resume`` (a stopped evaluation's directory), else ``run_dir``, else a fresh timestamped
    one, claimed for this evaluation: a directory that already holds files (an evaluation's, a
    training run's) is refused unless it is resumed."""
    if typed.resume is not None:
        if (
            typed.run_dir is not None
            and Path(typed.run_dir).resolve() != Path(typed.resume).resolve()
        ):
            raise ConfigError(
                f"run_dir={typed.run_dir} and resume={typed.resume} name different evaluations"
            )
        out = Path(typed.resume)
        if not (out / "results.json").is_file():
            raise RunDirError(f"resume={out}: no stopped evaluation (results.json) there")
        return claim_run_dir(out, lambda _: None)
    out = Path(typed.run_dir) if typed.run_dir else timestamped("evaluate", choice)
    return claim_run_dir(out, used)


def used(out: Path) -> str | None:
    """Why a fresh evaluation may not write into ``out``: it holds files."""
    if not holds_files(out):
        return None
    return (
        f"{out} is not empty: pass resume={out} to continue a stopped evaluation there, or "
        "choose another run_dir"
    )


def resumed_results(out: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The use cases a stopped evaluation in ``out`` finished, once its settings match."""
    saved = (
        yaml.safe_load((out / CONFIG_FILE).read_text()) if (out / CONFIG_FILE).is_file() else None
    )
    if saved is None:
        raise RunDirError(f"resume={out}: no {CONFIG_FILE} saved with the evaluation")
    changed = config_differences(saved, config, EVALUATION_RESUME_SAFE)
    if changed:
        listed = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, a, b in changed)
        raise ConfigError(f"resume={out}: the settings differ from the evaluation's ({listed})")
    data = json.loads((out / "results.json").read_text())
    if data.get("meta", {}).get("complete", True) is not False:
        raise RunDirError(f"resume={out}: the evaluation there is complete")
    return dict(data["results"])


def write_results(out: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    """results.json: the use cases done so far, and how (``complete: false`` until the end)."""
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))


def stopped(out: Path, results: dict[str, Any], meta: dict[str, Any], left: list[str]) -> NoReturn:
    """A stop signal's end: the finished use cases kept, one line, exit 128 + signal."""
    signum = requested()
    name = signal_name(signum)
    write_results(out, results, {**meta, "complete": False, "signal": name})
    done = ", ".join(results) or "no use case"
    print(
        f"stopped by {name}: {done} finished and kept in {out}; resume={out} continues with "
        f"{', '.join(left)}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(exit_status(signum))


def main(cfg: DictConfig) -> None:
    """Hydra task: evaluate, or print why not and exit with status 2."""
    try:
        run(cfg)
    except (ConfigError, CheckpointError, EnvConfigError, UseCaseError, RunDirError) as err:
        fail(err)


def entry() -> None:
    """``hmk8s-evaluate`` and ``scripts/evaluate.py``: the config composed once over the
    shipped configs, then `main`."""
    register_schema()
    run_command("evaluate", main, sys.argv[1:])
