"""Training throughput: the Anakin trainer at several ``num_envs`` against a host-loop DQN.

    python scripts/benchmark.py --env cartpole --num-envs 1,16,256,1024,4096

Both sides train the same network with the same batch size and update-to-data ratio; the
host loop (CleanRL ``dqn_jax`` style) steps the gymnasium env from Python. Prints a table with
ratios against the host loop measured in this run, then one JSON line. ``--sim`` adds the
simulator's own throughput table (random actions, no learning).

``--cpu-baseline`` also runs each Anakin size on JAX's CPU backend of the same machine (the
fair baseline on an accelerator, where the host loop dispatches every step to the device).

``--profile`` instead runs the README command (``scripts/train.py usecase=ml heuristic=true``,
then any overrides given after ``--``) twice with a fresh cache, cold and warm, and prints its
wall time split into compile, train, evaluate, checkpoint and other:

    python scripts/benchmark.py --profile
    python scripts/benchmark.py --profile -- total_steps=100000   # a shorter run

``--devices 1,2,4`` instead compares data-parallel device counts at each ``--num-envs``, as a
ratio to the first count; on a CPU, force host devices first:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python scripts/benchmark.py --env ml --devices 1,2,4 --num-envs 256
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import gymnasium as gym
import gymnax
import jax

from hmk8s.agents.config import AgentConfig, ScheduleConfig
from hmk8s.bench.fixed_costs import README_COMMAND, profile_command, table
from hmk8s.bench.sim import device_name, int_list, sim_steps_per_second
from hmk8s.bench.training import anakin_throughput, host_loop_throughput
from hmk8s.envs import ENV_IDS
from hmk8s.envs.gymnax_spec import gymnax_env_spec
from hmk8s.train.stop import exit_status, interrupt_on_signals, requested, signal_name


def make_envs(name: str, encoder: str):
    """(EnvSpec for the Anakin loop, gymnasium env for the host loop) of the same task."""
    if name == "cartpole":
        return gymnax_env_spec(*gymnax.make("CartPole-v1")), gym.make("CartPole-v1")
    from hmk8s import sim
    from hmk8s.envs.sim_spec import sim_env_spec

    env, params = sim.make(name, {"encoder": encoder})
    return sim_env_spec(env, params, encoder), gym.make(ENV_IDS[name], encoder=encoder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="cartpole", choices=["cartpole", *sorted(ENV_IDS)])
    parser.add_argument("--encoder", default="onehot", choices=["onehot", "continuous"])
    parser.add_argument("--num-envs", type=int_list, default=[1, 16, 256, 1024, 4096])
    parser.add_argument("--hidden", type=int_list, default=[120, 84])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--updates-per-step", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per timed chunk")
    parser.add_argument("--host-steps", type=int, default=3_000)
    parser.add_argument("--sim", action="store_true", help="also time the bare simulator")
    parser.add_argument(
        "--cpu-baseline", action="store_true", help="also time each size on the CPU backend"
    )
    parser.add_argument(
        "--devices", type=int_list, help="data-parallel device counts to compare (no host loop)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="the README command's fixed costs, cold and warm"
    )
    parser.add_argument("overrides", nargs="*", help="with --profile: more train.py overrides")
    args = parser.parse_args()
    if args.profile:
        profile(args.overrides)
        return
    if args.overrides:
        parser.error("overrides are for --profile")

    agent = AgentConfig(
        hidden=args.hidden,
        lr_decay_updates=0,
        batch_size=args.batch_size,
        buffer_size=100_000,
        learning_starts=args.batch_size,
        updates_per_step=args.updates_per_step,
        epsilon=ScheduleConfig("linear", 1.0, 0.05, 10_000),
    )
    spec, gym_env = make_envs(args.env, args.encoder)
    if args.devices:
        compare_devices(spec, agent, args)
        return
    host = host_loop_throughput(gym_env, agent, args.host_steps)
    rows = []
    for n in args.num_envs:
        row = {"num_envs": n, **anakin_throughput(spec, agent, n, max(args.steps, 4 * n))}
        row["ratio_vs_host_loop"] = row["env_steps_per_second"] / host["env_steps_per_second"]
        if args.cpu_baseline:
            with jax.default_device(jax.devices("cpu")[0]):
                cpu = anakin_throughput(spec, agent, n, max(args.steps, 4 * n))
            row["cpu_env_steps_per_second"] = cpu["env_steps_per_second"]
            row["ratio_vs_cpu"] = row["env_steps_per_second"] / cpu["env_steps_per_second"]
        rows.append(row)

    print(
        f"device {device_name()}  env {args.env}  hidden {args.hidden}  batch {args.batch_size}"
        f"  updates/step {args.updates_per_step}"
    )
    cpu_head = f" {'cpu steps/s':>12} {'x cpu':>7}" if args.cpu_baseline else ""
    print(f"{'envs':>10} {'env steps/s':>14} {'updates/s':>12} {'x host loop':>12}" + cpu_head)
    host_line = f"{'host loop':>10} {host['env_steps_per_second']:>14,.0f}"
    print(f"{host_line} {host['updates_per_second']:>12,.0f} {1.0:>12.1f}")
    for r in rows:
        print(
            f"{r['num_envs']:>10} {r['env_steps_per_second']:>14,.0f} "
            f"{r['updates_per_second']:>12,.0f} {r['ratio_vs_host_loop']:>12.1f}"
            + (
                f" {r['cpu_env_steps_per_second']:>12,.0f} {r['ratio_vs_cpu']:>7.1f}"
                if args.cpu_baseline
                else ""
            )
        )
    result = {
        "device": device_name(),
        "jax": jax.__version__,
        "env": args.env,
        "hidden": args.hidden,
        "batch_size": args.batch_size,
        "updates_per_step": args.updates_per_step,
        "host_loop": host,
        "anakin": rows,
    }
    if args.sim and args.env != "cartpole":
        result["sim"] = [
            {"num_envs": n, "steps_per_second": sim_steps_per_second(args.env, n, 120)}
            for n in args.num_envs
        ]
        print(f"{'envs':>10} {'sim steps/s (random actions, no learning)':>44}")
        for r in result["sim"]:
            print(f"{r['num_envs']:>10} {r['steps_per_second']:>44,.0f}")
    print(json.dumps(result))


def profile(overrides: list[str]) -> None:
    """Print the README command's wall time split, cold and warm, then one JSON line."""
    command = [*README_COMMAND, *overrides]
    try:
        with interrupt_on_signals():  # the run in progress is killed, its folder removed
            result = profile_command(command)
    except KeyboardInterrupt:
        signum = requested() or signal.SIGINT
        print(f"stopped by {signal_name(signum)}: nothing measured", file=sys.stderr)
        sys.exit(exit_status(signum))
    print(f"device {device_name()}  python scripts/train.py {' '.join(command)}")
    print(table(result))
    print(
        json.dumps({"device": device_name(), "jax": jax.__version__, "command": command, **result})
    )


def compare_devices(spec, agent: AgentConfig, args: argparse.Namespace) -> None:
    """Print (and emit as JSON) throughput per device count, as a ratio to the first count."""
    available = jax.device_count()
    if max(args.devices) > available:
        raise SystemExit(
            f"error: --devices {max(args.devices)} but JAX sees {available} device(s) "
            "(on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)"
        )
    rows = []
    for n in args.num_envs:
        first = None
        for d in args.devices:
            if n % d:
                raise SystemExit(f"error: --num-envs {n} does not split over {d} devices")
            row = {"num_envs": n, "devices": d}
            row |= anakin_throughput(spec, agent, n, max(args.steps, 4 * n), devices=d)
            first = first or row
            row["env_steps_ratio"] = row["env_steps_per_second"] / first["env_steps_per_second"]
            row["updates_ratio"] = row["updates_per_second"] / first["updates_per_second"]
            rows.append(row)
    print(
        f"device {device_name()} x {available}  env {args.env}  hidden {args.hidden}  "
        f"batch {args.batch_size} per device  updates/step {args.updates_per_step}"
    )
    print(f"{'envs':>8} {'devices':>8} {'env steps/s':>14} {'updates/s':>12} {'x first':>9}")
    for r in rows:
        print(
            f"{r['num_envs']:>8} {r['devices']:>8} {r['env_steps_per_second']:>14,.0f} "
            f"{r['updates_per_second']:>12,.0f} {r['env_steps_ratio']:>9.2f}"
        )
    print(json.dumps({"device": device_name(), "jax": jax.__version__, "data_parallel": rows}))
