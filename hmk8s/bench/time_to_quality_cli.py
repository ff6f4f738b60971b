"""Time to quality: when the greedy return first reaches hpa and hpa + 10, and when it stays.

    python scripts/time_to_quality.py --usecases ml,ehr,stream --agents dqn,haql
    python scripts/time_to_quality.py --usecases ml --agents haql \\
        --config "today=" --config "short=total_steps=100000 agent.updates_per_step=0.5"

Every ``--config NAME=OVERRIDES`` is what ``scripts/train.py usecase=U heuristic=H OVERRIDES``
would train (default: one config, ``defaults``, the shipped one). All of them run in this one
process, so their ratios are fair. Prints a table and one JSON line. Code:
`hmk8s.bench.time_to_quality`.
"""

from __future__ import annotations

import argparse
import json
import sys

from hmk8s.agents.config import AGENTS
from hmk8s.bench.sim import device_name
from hmk8s.bench.time_to_quality import MARGINS, parse_variant, time_to_quality
from hmk8s.domain.settings import EnvConfigError
from hmk8s.domain.usecases import UseCaseError
from hmk8s.shell.exit import fail
from hmk8s.train.config import ConfigError


def _names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


def _reach(row: dict, kind: str, margin: float) -> str:
    hit = row[kind][f"hpa+{margin:g}"]
    if hit["steps"] is None:
        return f"{'never':>18}"
    return f"{hit['seconds']:>8.1f} s {hit['steps'] / 1000:>6.0f}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecases", type=_names, default=["ehr", "ml", "stream"])
    parser.add_argument("--agents", type=_names, default=list(AGENTS))
    parser.add_argument("--config", action="append", dest="configs", metavar="NAME=OVERRIDES")
    parser.add_argument("--every", type=int, default=10_000, help="env steps between curve points")
    args = parser.parse_args()
    try:
        variants = [parse_variant(c) for c in args.configs or ["defaults="]]
        rows = time_to_quality(args.usecases, args.agents, variants, args.every)
    except (ConfigError, EnvConfigError, UseCaseError) as err:
        fail(err)

    print(f"device {device_name()}")
    head = "  ".join(
        f"{kind + ' hpa+' + format(m, 'g'):>18}" for kind in ("to", "stays") for m in MARGINS
    )
    print(
        f"{'use case':8} {'agent':5} {'config':12} {'hpa':>7} {'final':>7} {'train s':>8}  {head}"
    )
    for r in rows:
        reach = "  ".join(_reach(r, kind, m) for kind in ("reach", "holds") for m in MARGINS)
        print(
            f"{r['usecase']:8} {r['agent']:5} {r['config']:12} {r['hpa']:>7.1f} "
            f"{r['final_return']:>7.1f} {r['train_seconds']:>8.1f}  {reach}"
        )
    print(json.dumps({"device": device_name(), "command": sys.argv, "rows": rows}))
