"""Simulator throughput: vmapped JAX envs vs the gymnasium env stepped from Python.

    python scripts/bench_sim.py --usecase ml --num-envs 1,64,1024,16384

Prints a table and a JSON line; ratios are against the gymnasium loop measured in this run.
"""

from __future__ import annotations

import argparse
import json

from hmk8s.bench.sim import device_name, gym_steps_per_second, int_list, sim_steps_per_second
from hmk8s.envs import ENV_IDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default="ml", choices=sorted(ENV_IDS))
    parser.add_argument("--num-envs", type=int_list, default=[1, 64, 1024, 16384])
    parser.add_argument("--steps", type=int, default=120, help="scan length per measurement")
    parser.add_argument("--gym-steps", type=int, default=2000)
    args = parser.parse_args()

    gym_sps = gym_steps_per_second(ENV_IDS[args.usecase], args.gym_steps)
    rows = [
        {"num_envs": n, "steps_per_second": sim_steps_per_second(args.usecase, n, args.steps)}
        for n in args.num_envs
    ]
    print(f"device {device_name()}  use case {args.usecase}")
    print(f"{'envs':>8} {'env steps/s':>14} {'x gymnasium loop':>18}")
    print(f"{'gym':>8} {gym_sps:>14,.0f} {1.0:>18.1f}")
    for row in rows:
        row["ratio_vs_gym"] = row["steps_per_second"] / gym_sps
        print(
            f"{row['num_envs']:>8} {row['steps_per_second']:>14,.0f} {row['ratio_vs_gym']:>18.1f}"
        )
    print(
        json.dumps(
            {
                "device": device_name(),
                "usecase": args.usecase,
                "gym_steps_per_second": gym_sps,
                "sim": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
