"""The README command under several configs, back to back, with wall-clock ratios.

    python scripts/compare_configs.py --out /tmp/cmp \\
        --config "today=total_steps=300000 agent.updates_per_step=0.25" --config "new="

Each ``--config NAME=OVERRIDES`` runs ``scripts/train.py BASE OVERRIDES`` (``--base``, default
``usecase=ml heuristic=true``, the README command) as its own process, in the order given;
ratios are against the first. Prints a table and one JSON line. Code:
`hmk8s.bench.compare_configs`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hmk8s.bench.compare_configs import compare_configs
from hmk8s.bench.time_to_quality import check_names, parse_variant
from hmk8s.shell.exit import fail
from hmk8s.train.config import ConfigError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="usecase=ml heuristic=true")
    parser.add_argument("--config", action="append", dest="configs", metavar="NAME=OVERRIDES")
    parser.add_argument("--out", type=Path, required=True, help="a directory for the runs")
    args = parser.parse_args()
    try:
        variants = [parse_variant(c) for c in args.configs or []]
        check_names(variants)
        if args.out.exists() and any(args.out.iterdir()):
            raise ConfigError(f"--out {args.out} is not empty")
        rows = compare_configs(args.base.split(), variants, args.out)
    except (ConfigError, RuntimeError) as err:
        fail(err)

    print(f"{'config':12} {'return':>7} {'hpa':>6} {'env steps':>10} {'updates':>8} {'wall s':>7}")
    for r in rows:
        print(
            f"{r['config']:12} {r['return']:>7.1f} {r['hpa']:>6.1f} {r['env_steps']:>10,} "
            f"{r['updates']:>8,} {r['wall_seconds']:>7.0f}  x{r['wall_ratio']:.2f}"
        )
    print(json.dumps({"base": args.base, "rows": rows}))
