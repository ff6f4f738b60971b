"""Write a use case's request-rate trace (CSV) for the load generator to replay.

    python scripts/load_trace.py --usecase ml --steps 40 --seed 0 --out ml-rates.csv

The program and its options: `hmk8s.sim.load_trace_cli`.
"""

from hmk8s.sim.load_trace_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
