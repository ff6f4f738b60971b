"""Cost of one DQN update on the default device against the host CPU, in the same command.

    python scripts/bench_update.py --env ml --hidden 120-84,256-256 --batch-size 128,1024,8192

For each network and batch size, times updates of a fixed batch in one compiled `lax.scan`
on JAX's CPU backend and on the default device (a GPU where there is one), and prints the
microseconds per update and the CPU's time over the device's. On a machine whose default
device is the CPU both columns time the same device.
"""

from __future__ import annotations

import argparse
import json

import jax

from hmk8s.agents.config import AgentConfig
from hmk8s.bench.sim import device_name, int_list
from hmk8s.bench.training import update_seconds
from hmk8s.envs import ENV_IDS


def hidden_list(text: str) -> list[list[int]]:
    """``120-84,256-256`` -> ``[[120, 84], [256, 256]]``."""
    return [[int(w) for w in layer.split("-")] for layer in text.split(",") if layer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ml", choices=sorted(ENV_IDS))
    parser.add_argument("--hidden", type=hidden_list, default=[[120, 84], [256, 256]])
    parser.add_argument("--batch-size", type=int_list, default=[128, 1024, 8192])
    parser.add_argument("--updates", type=int, default=1_000, help="updates per timed scan")
    args = parser.parse_args()

    from hmk8s import sim
    from hmk8s.envs.sim_spec import sim_env_spec

    env, params = sim.make(args.env)
    spec = sim_env_spec(env, params, "onehot")
    cpu, device = jax.devices("cpu")[0], jax.devices()[0]
    rows = []
    for hidden in args.hidden:
        for batch_size in args.batch_size:
            agent = AgentConfig(hidden=hidden, batch_size=batch_size, lr_decay_updates=0)
            row = {"hidden": hidden, "batch_size": batch_size}
            for name, where in (("cpu", cpu), ("device", device)):
                seconds = update_seconds(agent, spec.obs_dim, spec.num_actions, where, args.updates)
                row[f"{name}_us_per_update"] = seconds * 1e6
            row["cpu_over_device"] = row["cpu_us_per_update"] / row["device_us_per_update"]
            rows.append(row)
    print(f"device {device_name()}  env {args.env}  obs {spec.obs_dim}  actions {spec.num_actions}")
    print(f"{'hidden':>10} {'batch':>7} {'cpu us':>10} {'device us':>10} {'cpu / device':>13}")
    for r in rows:
        hidden = "-".join(map(str, r["hidden"]))
        print(
            f"{hidden:>10} {r['batch_size']:>7} {r['cpu_us_per_update']:>10,.1f} "
            f"{r['device_us_per_update']:>10,.1f} {r['cpu_over_device']:>13.1f}"
        )
    print(
        json.dumps({"device": device_name(), "jax": jax.__version__, "env": args.env, "rows": rows})
    )
