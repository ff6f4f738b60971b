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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import jax
import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hmk8s.configs import SEARCH_PATH
from hmk8s.evaluate.experiment import EvaluateConfig, evaluate_usecase, usecase_agent
from hmk8s.evaluate.report import render_markdown, write_figures
from hmk8s.evaluate.sweep import read_sweep
from hmk8s.sim.params import EnvConfigError
from hmk8s.sim.scenarios import ScenarioError, check_scenarios
from hmk8s.train.checkpoint import CheckpointError
from hmk8s.train.cli import EXIT_BAD_INPUT, SCHEMA_NAME, check_overrides
from hmk8s.train.config import ConfigError, TrainConfig, validate
from hmk8s.usecases import CONFIG_DIR, UseCaseError

ALL = "all"
#: What ``usecase=all`` evaluates. It is registered as an option of the ``usecase`` group in
#: Python, not as a file under `configs/usecase/`, which holds only real use cases.
ALL_USECASES = ("ehr", "ml", "stream")


@dataclass
class EvaluateRoot(TrainConfig):
    """The training config plus the ``evaluate`` block; `configs/config.yaml` unchanged.
    ``runs_from``: a training sweep's directory whose runs are evaluated instead of training
    (their own configs then decide how they trained)."""

    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    runs_from: str | None = None


def register_schema() -> None:
    """Type the root config (the ``train_schema`` entry of `configs/config.yaml`) as
    `EvaluateRoot`, so the training tree is reused with one more block, and offer
    ``usecase=all``."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=EvaluateRoot)
    store.store(group="usecase", name=ALL, node={ALL: list(ALL_USECASES)})


def usecases(choice: str, mapping: Any) -> dict[str, dict[str, Any]]:
    """Use-case mappings by name: the chosen one (with any command-line changes), or each of
    `ALL_USECASES` as its YAML file defines it."""
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
    validate(typed)
    if any(xi < 0 for xi in typed.evaluate.deployed_xi_grid):
        grid = typed.evaluate.deployed_xi_grid
        raise ConfigError(f"evaluate.deployed_xi_grid must hold weights >= 0, got {grid}")
    for name in typed.evaluate.agent_by_usecase:
        if name not in ALL_USECASES:
            raise ConfigError(
                f"evaluate.agent_by_usecase: unknown use case {name!r} "
                f"(one of {', '.join(ALL_USECASES)})"
            )
        validate(dataclasses.replace(typed, agent=usecase_agent(typed.agent, name, typed.evaluate)))
    try:
        check_scenarios(typed.evaluate.scenarios)
    except ScenarioError as err:
        raise ConfigError(f"evaluate.scenarios: {err}") from err
    chosen = usecases(choice, cfg.usecase)
    sweep = None
    if typed.runs_from is not None:
        sweep = read_sweep(Path(typed.runs_from), list(chosen), typed.haql.deployed_xi)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(typed.run_dir or f"runs/evaluate-{choice}-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for name, mapping in chosen.items():
        if sweep is None:
            result, data = evaluate_usecase(name, mapping, typed, typed.evaluate)
        else:
            # the sweep trained the agents: they are read, one after the other
            group = sweep[name]
            ev = dataclasses.replace(typed.evaluate, agent_by_usecase={}, train_together=False)
            result, data = evaluate_usecase(
                name, group.mapping, group.cfg, ev, source=group.agent_run
            )
        results[name] = result
        write_figures(out, name, result, data)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    meta = {
        "command": "python scripts/evaluate.py " + " ".join(sys.argv[1:]),
        "device": device(),
        "wall_seconds": time.perf_counter() - start,
        **({} if sweep is None else {"runs_from": str(Path(typed.runs_from).resolve())}),
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / "results.md").write_text(render_markdown(results, meta))
    print(f"wrote {out}/results.md ({meta['wall_seconds'] / 60:.1f} min)")
    return out


def main(cfg: DictConfig) -> None:
    """Hydra task: evaluate, or print why not and exit with status 2."""
    try:
        run(cfg)
    except (ConfigError, CheckpointError, EnvConfigError, UseCaseError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


@hydra.main(config_path=SEARCH_PATH, config_name="evaluate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    main(cfg)


def entry() -> None:
    """``hmk8s-evaluate`` and ``scripts/evaluate.py``: Hydra over the shipped configs, then
    `main`."""
    register_schema()
    check_overrides("evaluate", sys.argv[1:])
    _hydra_main()
