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
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import jax
import numpy as np

from hmk8s.agents.config import AgentConfig, HaqlConfig
from hmk8s.agents.replay import Transition
from hmk8s.k8s.emulated.harness import Emulation, emulation
from hmk8s.k8s.emulated.twin import Twin
from hmk8s.k8s.env import KubernetesClusterEnv
from hmk8s.train.actor_learner.core import AsyncFns, make_async_fns
from hmk8s.train.actor_learner.k8s_run import build_envs, close_envs, heuristic_hint
from hmk8s.train.actor_learner.loop import AsyncSettings, train_async


class PacedTwinClock:
    """Cluster time for the benchmark: a step waits out its wall-clock seconds, then the twin
    plays one step of the dynamics."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin

    def reset(self, key: jax.Array) -> None:
        self.twin.reset(key)

    def step(self, key: jax.Array, seconds: float) -> None:
        time.sleep(seconds)
        self.twin.advance(key)


@dataclass
class Window:
    """Timestamps of replay writes and (time, updates) samples; rates over a window."""

    first_step: dict[int, float] = field(default_factory=dict)
    writes: list[float] = field(default_factory=list)
    updates: list[tuple[float, int]] = field(default_factory=list)
    start: float | None = None

    def rates(self, seconds: float) -> tuple[float, float]:
        end = self.start + seconds
        inside = [t for t in self.writes if self.start <= t <= end]
        steps = (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 1 else 0.0
        upd = [(t, u) for t, u in self.updates if self.start <= t <= end]
        ups = (upd[-1][1] - upd[0][1]) / (upd[-1][0] - upd[0][0]) if len(upd) > 1 else 0.0
        return steps, ups


def prefilled(fns: AsyncFns, obs_dim: int, num_actions: int, size: int):
    """A fresh train state whose replay already holds ``size`` random transitions, so the
    learner updates from the first env step of the window on, as deep into a run."""
    state = fns.init(jax.random.PRNGKey(0), np.zeros((obs_dim,), np.float32))
    rng = np.random.default_rng(0)
    batch = Transition(
        obs=rng.random((size, obs_dim), np.float32),
        action=rng.integers(0, num_actions, size).astype(np.int32),
        reward=rng.random(size, np.float32),
        terminated=np.zeros(size, bool),
        next_obs=rng.random((size, obs_dim), np.float32),
        next_mask=np.ones((size, num_actions), bool),
        next_hint=np.full(size, -1, np.int32),
    )
    state = state._replace(buffer=fns.add(state.buffer, batch), env_steps=np.int32(size))
    jax.block_until_ready(fns.learn(state.learner, state.buffer, state.rng, state.env_steps))
    return state


def run_async(
    fns: AsyncFns, envs: list, ratio: float, seconds: float, state
) -> tuple[float, float, float, float]:
    """(env steps/s, updates/s, learner busy share, mean policy batch) in the window."""
    window = Window()
    stop = threading.Event()

    def on_write(record, place) -> None:
        now = time.monotonic()
        window.writes.append(now)
        window.first_step.setdefault(record.env, now)
        if window.start is None and len(window.first_step) == len(envs):
            window.start = now
        if window.start is not None and now > window.start + seconds:
            stop.set()

    def on_log(row) -> None:
        window.updates.append((time.monotonic(), int(row["updates"])))

    settings = AsyncSettings(
        total_steps=10**9, ratio=ratio, log_every=1, max_seconds=seconds + 600, burst=4
    )
    result = train_async(
        fns, envs, heuristic_hint, state, settings, on_write=on_write, on_log=on_log, stop=stop
    )
    if result.error is not None:
        raise result.error
    steps, ups = window.rates(seconds)
    return steps, ups, result.learner_busy_s / result.wall_s, result.actor.mean_batch


def run_sync(fns: AsyncFns, env, ratio: float, seconds: float, state) -> tuple[float, float]:
    """The synchronous loop on one env: act, step, write, ``ratio`` updates, in turn."""
    obs, info = env.reset(seed=0)
    hint = heuristic_hint(env)
    buffer, learner, rng = state.buffer, state.learner, state.rng
    written, updates = int(state.env_steps), 0
    window = Window()
    key = jax.random.PRNGKey(1)
    owed = 0.0
    while window.start is None or time.monotonic() <= window.start + seconds:
        key, k_act = jax.random.split(key)
        steps = np.asarray(written, np.int32)
        action = int(
            fns.act(
                learner.params,
                obs[None],
                info["action_mask"][None],
                np.asarray([hint], np.int32),
                steps,
                k_act,
            )[0]
        )
        next_obs, reward, terminated, truncated, info = env.step(action)
        next_hint = heuristic_hint(env)
        t = Transition(
            obs[None],
            np.int32([action]),
            np.float32([reward]),
            np.bool_([terminated]),
            next_obs[None],
            info["action_mask"][None],
            np.int32([next_hint]),
        )
        buffer = fns.add(buffer, t)
        written += 1
        if written >= fns.learning_starts:
            owed += ratio
            while owed >= 1.0:
                rng, k = jax.random.split(rng)
                learner, _ = fns.learn(learner, buffer, k, steps)
                updates += 1
                owed -= 1.0
            jax.block_until_ready(learner.params)
        now = time.monotonic()
        window.writes.append(now)
        window.updates.append((now, updates))
        if window.start is None:
            window.start = now
        obs, hint = next_obs, next_hint
        if terminated or truncated:
            obs, info = env.reset()
            hint = heuristic_hint(env)
    return window.rates(seconds)


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
    agent = AgentConfig(learning_starts=128, buffer_size=20_000, updates_per_step=args.ratio)
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


if __name__ == "__main__":
    main()
