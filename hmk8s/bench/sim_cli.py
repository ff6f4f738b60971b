"""Simulator throughput: vmapped JAX envs vs the gymnasium env stepped from Python.

    python scripts/bench_sim.py --usecase ml --num-envs 1,64,1024,16384

Prints a table and a JSON line; ratios are against the gymnasium loop measured in this run.
``--cpu-baseline`` also runs each size on JAX's CPU backend of the same machine, the fair
baseline for an accelerator (the gymnasium env then dispatches every step to the accelerator).
"""

from __future__ import annotations

import argparse
import json

import jax

from hmk8s.bench.sim import device_name, gym_steps_per_second, int_list, sim_steps_per_second
from hmk8s.envs import ENV_IDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default="ml", choices=sorted(ENV_IDS))
    parser.add_argument("--num-envs", type=int_list, default=[1, 64, 1024, 16384])
    parser.add_argument("--steps", type=int, default=120, help="scan length per measurement")
    parser.add_argument("--gym-steps", type=int, default=2000)
    parser.add_argument(
        "--cpu-baseline", action="store_true", help="also time each size on the CPU backend"
    )
    args = parser.parse_args()

    gym_sps = gym_steps_per_second(ENV_IDS[args.usecase], args.gym_steps)
    rows = [
        {"num_envs": n, "steps_per_second": sim_steps_per_second(args.usecase, n, args.steps)}
        for n in args.num_envs
    ]
    if args.cpu_baseline:
        with jax.default_device(jax.devices("cpu")[0]):
            for row in rows:
                cpu_sps = sim_steps_per_second(args.usecase, row["num_envs"], args.steps)
                row["cpu_steps_per_second"] = cpu_sps
                row["ratio_vs_cpu"] = row["steps_per_second"] / cpu_sps
    print(f"device {device_name()}  use case {args.usecase}")
    print(
        f"{'envs':>8} {'env steps/s':>14} {'x gymnasium loop':>18} {'cpu steps/s':>14} {'x cpu':>7}"
    )
    print(f"{'gym':>8} {gym_sps:>14,.0f} {1.0:>18.1f}")
    for row in rows:
        row["ratio_vs_gym"] = row["steps_per_second"] / gym_sps
        cpu = (
            f" {row['cpu_steps_per_second']:>14,.0f} {row['ratio_vs_cpu']:>7.1f}"
            if args.cpu_baseline
            else ""
        )
        print(
            f"{row['num_envs']:>8} {row['steps_per_second']:>14,.0f} {row['ratio_vs_gym']:>18.1f}"
            + cpu
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
