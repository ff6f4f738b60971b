"""The asynchronous actor / learner against emulated Kubernetes clusters, measured.

A paced twin clock gives each step its wall-clock seconds, `run_async` measures env steps/s and
updates/s of the actor/learner in a window after every env has stepped once, and `run_sync`
measures the same window for a synchronous loop on one env. `scripts/bench_async.py` prints
the table of docs/benchmarks.md from these.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import jax
import numpy as np

from hmk8s.agents.replay import Transition
from hmk8s.k8s.emulated.twin import Twin
from hmk8s.train.actor_learner.core import AsyncFns
from hmk8s.train.actor_learner.k8s_run import heuristic_hint
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
                learner, buffer, _ = fns.learn(learner, buffer, k, steps)
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
