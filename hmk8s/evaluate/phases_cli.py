"""A trained run's greedy seeds beside `hpa_exact` on one load, phase by phase.

    python scripts/scenario_steps.py RUN_DIR --load peak_x2 --xi 0.5 \\
        --target 0.6 --tolerance 0.1 --window 0 --phases 0,10,40,120

On the evaluation's held-out episodes (`scripts/evaluate.py`'s key), per policy and phase of
the episode: return, SLA violations, pods, steps with a cluster at its pod cap, pods added or
removed per step and, for the agent's seeds, what their one action a step did (deploy, remove,
re-route, no-op; repeated re-routes; deployed configs). Give `hpa_exact` the calibrated knobs
of the evaluation's `results.json` (`calibration.hpa_exact.knobs`). Prints a table and one
JSON line. Code: `hmk8s.evaluate.phases`.
"""

from __future__ import annotations

import argparse
import json
import sys

from hmk8s.domain.settings import EnvConfigError
from hmk8s.domain.usecases import UseCaseError
from hmk8s.evaluate.phases import DEFAULT_LOAD, run_phases
from hmk8s.shell.exit import fail
from hmk8s.train.checkpoint import CheckpointError
from hmk8s.train.config import ConfigError


def _bounds(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not comma-separated steps: {text!r}") from err


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(name: str, s: dict) -> str:
    steps = f"{s['steps'][0]}-{s['steps'][1] - 1}"
    cells = [
        name,
        steps,
        f"{s['return']:.1f}",
        f"{s['sla_violation_rate']:.3f}",
        f"{s['mean_pods']:.2f}",
        f"{s['steps_at_cap']:.2f}",
        f"{s['pods_changed']:.2f}",
        f"{s['steps_changing_more_than_one']:.2f}",
    ]
    acts = s.get("actions")
    if acts is None:
        cells += ["-", "-", "-"]
    else:
        cells.append(" / ".join(_share(acts["share"][k]) for k in acts["share"]))
        cells.append(_share(acts["repeated_reroutes"]))
        configs = acts["deployed_configs"]
        cells.append("-" if configs is None else " / ".join(_share(v) for v in configs.values()))
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a training run's directory (its last checkpoint)")
    parser.add_argument("--load", default=DEFAULT_LOAD, help="'default' or a scenario name")
    parser.add_argument("--xi", type=float, default=None, help="HAQL's weight (default: deployed)")
    parser.add_argument("--target", type=float, default=0.8, help="hpa_exact's target utilisation")
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--window", type=float, default=300.0, help="scale-down window, seconds")
    parser.add_argument("--phases", type=_bounds, default=[0, 10, 40, 120])
    parser.add_argument("--episodes", type=int, default=32)
    args = parser.parse_args()
    knobs = {
        "target_utilisation": args.target,
        "tolerance": args.tolerance,
        "stabilisation_s": args.window,
    }
    try:
        out = run_phases(args.run, args.load, knobs, args.phases, args.xi, args.episodes)
    except (ConfigError, CheckpointError, EnvConfigError, UseCaseError) as err:
        fail(err)

    print(
        "| policy | steps | return | SLA violations | mean pods | steps with a cluster full "
        "| pods changed per step "
        "| steps changing > 1 pod | deploy / remove / re-route / no-op | repeated re-routes "
        "| deployed small / medium / large |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
    for name, scores in out["policies"].items():
        for s in [scores["episode"], *scores["phases"]]:
            print(_row(name, s))
    print(json.dumps({"command": sys.argv, **out}))
