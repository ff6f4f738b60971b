"""Write a use case's request-rate trace (CSV) for the load generator to replay.

    python scripts/load_trace.py --usecase ml --steps 40 --seed 0 --out ml-rates.csv

Rows are steps of the use case's `step_seconds`, columns its proxies (proxy0, proxy1, ...), drawn
by the simulator's load process. Replay it with deploy/images/loadgen.py (deploy/loadgen.yaml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hmk8s.domain.usecases import UseCaseError, load_usecase
from hmk8s.shell.exit import refuse
from hmk8s.sim.load_trace import rate_trace, trace_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default="ml", help="a shipped use case or a YAML path")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        return refuse("--steps must be at least 1")
    try:
        usecase = load_usecase(args.usecase)
    except UseCaseError as err:
        return refuse(err)
    text = trace_csv(usecase, rate_trace(usecase, args.steps, args.seed))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0
