"""The actor: keeps every env in flight and answers the ready ones with one batched policy call.

Env workers post an observation when they are ready for an action; the actor takes whatever
is ready (waiting at most ``batch_window_s`` for more), pads it to ``num_envs`` rows, runs the
jitted epsilon-greedy / HAQL policy once on the device with the latest published parameters,
and hands each env its action. It never waits for a particular env, so a slow or failed env
holds up nobody. It stops once ``budget`` env steps have reached the learner's queue.

An env whose worker retired (its clusters unreachable, its namespace gone) ends the run with
`EnvLost`: training on the envs left would quietly change what the run learns from. Only with
``allow_env_loss`` does it go on without that env, and it says so once per env.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass

import jax
import numpy as np

from hmk8s.train.actor_learner.core import AsyncFns
from hmk8s.train.actor_learner.env_worker import POLL_S, EnvWorker, Ready, Signals
from hmk8s.train.actor_learner.learner import ParamsBox

log = logging.getLogger(__name__)


class EnvLost(RuntimeError):
    """An env worker retired, and the run may not go on without it."""


class AllEnvsFailed(EnvLost):
    """Every env worker has retired; nothing is left to act on."""


@dataclass
class ActorStats:
    """How the actor spent its time: batched policy calls and the rows they answered."""

    calls: int = 0
    actions: int = 0
    act_s: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.actions / self.calls if self.calls else 0.0


class Actor:
    """Batches ready observations into policy calls and dispatches the actions."""

    def __init__(
        self,
        fns: AsyncFns,
        workers: list[EnvWorker],
        ready: queue.Queue[Ready],
        params: ParamsBox,
        signals: Signals,
        key: jax.Array,
        *,
        obs_dim: int,
        num_actions: int,
        env_steps: int = 0,
        batch_window_s: float = 0.005,
        allow_env_loss: bool = False,
    ) -> None:
        self.fns = fns
        self.workers = workers
        self.ready = ready
        self.params = params
        self.signals = signals
        self.key = key
        self.obs_dim = obs_dim
        self.num_actions = num_actions
        self.env_steps = env_steps
        self.batch_window_s = batch_window_s
        self.allow_env_loss = allow_env_loss
        self.stats = ActorStats()
        self._lost: set[int] = set()

    def run(self, budget: int, deadline: float | None = None) -> int:
        """Act until ``budget`` env steps have been handed to the learner; stops early on
        ``stop`` or at ``deadline`` (`time.monotonic`), raises `AllEnvsFailed`. A failed step
        does not count, so the env that gets the action next makes up for it. Returns the
        number of actions dispatched."""
        start = self._handed()
        waiting: list[Ready] = []
        dispatched = 0
        while not self.signals.stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            in_flight = sum(w.busy for w in self.workers)
            handed = self._handed() - start
            if handed >= budget:
                break
            waiting += self._gather()
            self._check_lost()
            allowed = budget - handed - in_flight
            if not waiting or allowed <= 0:
                if not any(w.alive for w in self.workers) and not self.signals.stop.is_set():
                    first = next((w.error for w in self.workers if w.error is not None), None)
                    raise AllEnvsFailed(f"every environment failed; the first: {first}")
                continue
            batch, waiting = waiting[:allowed], waiting[allowed:]
            for row, action in zip(batch, self._act(batch), strict=True):
                self.workers[row.env].give(int(action))
            dispatched += len(batch)
        return dispatched

    def _check_lost(self) -> None:
        """Raise `EnvLost` for a newly retired env, or (``allow_env_loss``) warn about it."""
        for w in self.workers:
            if w.index in self._lost or w.error is None or w.alive:
                continue
            self._lost.add(w.index)
            left = len(self.workers) - len(self._lost)
            if not left:  # none left: `AllEnvsFailed` says so
                return
            if self.allow_env_loss:
                log.warning(
                    "env %d was lost (%s); going on with %d envs (backend.allow_env_loss)",
                    w.index,
                    w.error,
                    left,
                )
            elif not self.signals.stop.is_set():
                raise EnvLost(
                    f"env {w.index} was lost ({w.error}); the run stops rather than train on "
                    f"the {left} left (backend.allow_env_loss=true lets it go on)"
                )

    def _handed(self) -> int:
        return sum(w.steps for w in self.workers)

    def _gather(self) -> list[Ready]:
        try:
            items = [self.ready.get(timeout=POLL_S)]
        except queue.Empty:
            return []
        alive = sum(w.alive for w in self.workers)
        end = time.monotonic() + self.batch_window_s
        while len(items) < alive:
            remaining = end - time.monotonic()
            try:
                item = (
                    self.ready.get_nowait() if remaining <= 0 else self.ready.get(timeout=remaining)
                )
            except queue.Empty:
                break
            items.append(item)
        return items

    def _act(self, batch: list[Ready]) -> np.ndarray:
        started = time.monotonic()
        rows = self.fns.num_envs
        obs = np.zeros((rows, self.obs_dim), np.float32)
        mask = np.ones((rows, self.num_actions), bool)
        hint = np.full((rows,), -1, np.int32)
        for i, item in enumerate(batch):
            obs[i], mask[i], hint[i] = item.obs, item.mask, item.hint
        params, _ = self.params.latest()
        self.key, key = jax.random.split(self.key)
        steps = np.asarray(self.env_steps, np.int32)
        actions = np.asarray(self.fns.act(params, obs, mask, hint, steps, key))[: len(batch)]
        self.env_steps += len(batch)
        self.stats.calls += 1
        self.stats.actions += len(batch)
        self.stats.act_s += time.monotonic() - started
        return actions
