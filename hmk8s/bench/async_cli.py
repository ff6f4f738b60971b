"""Benchmark of the asynchronous actor / learner against emulated Kubernetes clusters.

    python scripts/bench_async.py --num-envs 1,2,4,8,16 --api-latency 0.2 --step-seconds 1

Each env is a `KubernetesClusterEnv` over its own emulated cluster set (loopback API server
with ``--api-latency`` seconds per request, the twin playing the simulator's dynamics). A step
lasts its API calls plus ``--step-seconds`` of cluster time. For every env count the actor
and learner run until each env has stepped once (resets and compilation out of the way), then
for ``--seconds``; env steps/s and learner updates/s are measured in that window (the replay
is pre-filled, so the learner updates throughout). The same window is measured for a
synchronous loop on one env (act, step, write, ``ratio`` updates, in turn). Prints a Markdown
table; the figures of docs/benchmarks.md come from it.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack

from hmk8s.agents.config import AgentConfig, HaqlConfig
from hmk8s.bench.actor_learner import PacedTwinClock, prefilled, run_async, run_sync
from hmk8s.k8s.emulated.harness import Emulation, emulation
from hmk8s.k8s.env import KubernetesClusterEnv
from hmk8s.train.actor_learner.core import make_async_fns
from hmk8s.train.actor_learner.k8s_run import build_envs, close_envs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default="ml")
    parser.add_argument("--num-envs", default="1,2,4,8,16")
    parser.add_argument("--api-latency", type=float, default=0.2, help="seconds per API call")
    parser.add_argument("--step-seconds", type=float, default=1.0, help="cluster time per step")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per run")
    parser.add_argument("--ratio", type=float, default=8.0, help="updates per env step")
    parser.add_argument("--episode-steps", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    counts = [int(n) for n in args.num_envs.split(",")]
    env_cfg = {"start": "minimal", "episode_steps": args.episode_steps}
    backend = {"step_seconds": args.step_seconds, "poll_interval_s": 0.2}
    agent = AgentConfig(
        learning_starts=128, buffer_size=20_000, updates_per_step=args.ratio, lr_decay_updates=0
    )
    with ExitStack() as stack:
        emus: list[Emulation] = [
            stack.enter_context(
                emulation(
                    args.usecase, env_cfg, backend=backend, api_latency_s=args.api_latency, seed=i
                )
            )
            for i in range(max(counts))
        ]

        def factory(i: int, _: dict) -> KubernetesClusterEnv:
            e = emus[i]
            return KubernetesClusterEnv(e.usecase, e.env_cfg, e.cmap, clock=PacedTwinClock(e.twin))

        envs = build_envs(factory, [{} for _ in emus])
        try:
            num_actions = int(envs[0].action_space.n)
            obs_dim = int(envs[0].observation_space.shape[0])
            rows = []
            fns1 = make_async_fns(num_actions, agent, 1, HaqlConfig())
            state = prefilled(fns1, obs_dim, num_actions, fns1.learning_starts)
            sync = run_sync(fns1, envs[0], args.ratio, args.seconds, state)
            print(f"sync: {sync[0]:.3f} steps/s {sync[1]:.2f} updates/s", flush=True)
            for n in counts:
                fns = make_async_fns(num_actions, agent, n, HaqlConfig())
                state = prefilled(fns, obs_dim, num_actions, fns.learning_starts)
                out = run_async(fns, envs[:n], args.ratio, args.seconds, state)
                rows.append((n, *out))
                print(
                    f"{n} envs: {out[0]:.3f} steps/s {out[1]:.2f} updates/s "
                    f"busy {out[2]:.2f} batch {out[3]:.2f}",
                    flush=True,
                )
        finally:
            close_envs(envs, timeout_s=120.0)
    one = rows[0][1] if rows and rows[0][0] == 1 else float("nan")
    print()
    print(
        f"api latency {args.api_latency} s/call, step {args.step_seconds} s, "
        f"ratio {args.ratio} updates/step, window {args.seconds} s"
    )
    print(
        "| arrangement | env steps/s | x 1 env | x sync loop | learner updates/s "
        "| learner busy | mean policy batch |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| sync loop, 1 env | {sync[0]:.3f} | | 1.0 | {sync[1]:.2f} | | 1 |")
    for n, steps, ups, busy, batch in rows:
        print(
            f"| async, {n} envs | {steps:.3f} | {steps / one:.1f} | {steps / sync[0]:.1f} "
            f"| {ups:.2f} | {busy:.0%} | {batch:.2f} |"
        )
