"""Asynchronous training over blocking envs: start the env workers, the learner and the actor,
run to a step budget, and always stop every thread, however the run ends.

It knows nothing of Kubernetes: any env with gymnasium's ``reset``/``step`` and
``info["action_mask"]`` plus a hint function will do (`k8s_run` feeds it cluster envs, the
tests feed it slowed-down simulators). Shutdown: ``stop`` lets in-flight steps finish and
reach the replay, bounded by ``shutdown_timeout_s``; a second Ctrl-C, a learner error or the
timeout sets ``abort``, which discards them. Either way the books match the replay.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from hmk8s.train.actor_learner.actor import Actor, ActorStats
from hmk8s.train.actor_learner.core import AsyncFns, host_books
from hmk8s.train.actor_learner.env_worker import (
    BlockingEnv,
    EnvWorker,
    HintFn,
    Ready,
    Signals,
    StepRecord,
)
from hmk8s.train.actor_learner.learner import LearnerThread, ParamsBox
from hmk8s.train.state import TrainState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AsyncSettings:
    """Knobs of the actor / learner arrangement (the learner's own come from `AgentConfig`).

    ``ratio``: updates per env step written; ``queue_size``: env steps that may wait for the
    learner before env workers block (0: four per env); ``batch_window_s``: how long the actor
    waits for more ready envs before a policy call; ``burst``: updates between parameter
    publications; ``checkpoint_every`` / ``log_every``: env steps between checkpoints / log
    rows (0: never); ``max_seconds``: wall-clock bound of the acting phase (None: none);
    ``allow_env_loss``: go on when an env retires (by default the run stops with `EnvLost`).
    """

    total_steps: int
    ratio: float
    seed: int = 0
    queue_size: int = 0
    batch_window_s: float = 0.005
    burst: int = 8
    max_env_failures: int = 5
    failure_backoff_s: float = 1.0
    shutdown_timeout_s: float = 60.0
    checkpoint_every: int = 0
    log_every: int = 0
    max_seconds: float | None = None
    allow_env_loss: bool = False


@dataclass
class AsyncResult:
    """How a run ended, and the train state to checkpoint (None when it cannot be trusted)."""

    state: TrainState | None
    env_steps: int
    updates: int
    wall_s: float
    learner_busy_s: float
    actor: ActorStats
    env_failures: list[int]
    env_steps_per_env: list[int]
    interrupted: bool = False
    error: BaseException | None = None
    abandoned: list[str] = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else 0.0


def train_async(
    fns: AsyncFns,
    envs: Sequence[BlockingEnv],
    hint_fn: HintFn,
    state: TrainState,
    settings: AsyncSettings,
    *,
    on_write: Callable[[StepRecord, Any], None] | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> AsyncResult:
    """Train from ``state`` until ``settings.total_steps`` env steps in all (counting those
    ``state`` already holds), Ctrl-C, ``max_seconds``, ``stop`` being set (from any thread;
    it ends the run as Ctrl-C does), or an error; never raises for those, the result says how
    it ended."""
    if len(envs) != fns.num_envs:
        raise ValueError(f"{len(envs)} envs given, the policy was built for {fns.num_envs}")
    books = host_books(state.env_state)
    start_steps = int(books.env_steps.sum())
    signals = Signals() if stop is None else Signals(stop=stop)
    ready: queue.Queue[Ready] = queue.Queue()
    records: queue.Queue[StepRecord] = queue.Queue(maxsize=settings.queue_size or 4 * len(envs))
    workers = [
        EnvWorker(
            i,
            env,
            hint_fn,
            ready,
            records,
            signals,
            seed=settings.seed,
            start_steps=int(books.env_steps[i]),
            max_failures=settings.max_env_failures,
            backoff_s=settings.failure_backoff_s,
        )
        for i, env in enumerate(envs)
    ]
    params = ParamsBox(state.learner.params, int(np.asarray(state.learner.updates)))
    learner = LearnerThread(
        fns,
        state,
        records,
        params,
        signals,
        ratio=settings.ratio,
        burst=settings.burst,
        on_write=on_write,
        on_checkpoint=on_checkpoint,
        checkpoint_every=settings.checkpoint_every,
        on_log=on_log,
        log_every=settings.log_every,
    )
    key = jax.random.fold_in(jax.random.PRNGKey(settings.seed + 1), start_steps)
    actor = Actor(
        fns,
        workers,
        ready,
        params,
        signals,
        key,
        obs_dim=int(state.obs.shape[-1]),
        num_actions=int(state.mask.shape[-1]),
        env_steps=start_steps,
        batch_window_s=settings.batch_window_s,
        allow_env_loss=settings.allow_env_loss,
    )
    started = time.monotonic()
    deadline = None if settings.max_seconds is None else started + settings.max_seconds
    interrupted, error = False, None
    learner.start()
    for worker in workers:
        worker.start()
    try:
        actor.run(max(0, settings.total_steps - start_steps), deadline)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: finishing in-flight env steps (Ctrl-C again to discard them)")
    except BaseException as exc:  # SystemExit (SIGTERM) too: stop cleanly, then the caller raises
        error = exc
    abandoned, interrupted = _shutdown(workers, learner, signals, settings, interrupted)
    error = learner.error or error
    trusted = learner.error is None and not learner.alive
    return AsyncResult(
        state=learner.state if trusted else None,
        env_steps=learner.written - start_steps,
        updates=learner.updates - int(np.asarray(state.learner.updates)),
        wall_s=time.monotonic() - started,
        learner_busy_s=learner.busy_s,
        actor=actor.stats,
        env_failures=[w.failures for w in workers],
        env_steps_per_env=[int(n) for n in learner.state.env_state.env_steps],
        interrupted=interrupted,
        error=error,
        abandoned=abandoned,
    )


def _shutdown(
    workers: list[EnvWorker],
    learner: LearnerThread,
    signals: Signals,
    settings: AsyncSettings,
    interrupted: bool,
) -> tuple[list[str], bool]:
    """Stop the workers (finishing their steps), then let the learner write what is queued.
    Returns the threads that did not end in time, and whether a Ctrl-C came."""
    signals.stop.set()
    deadline = time.monotonic() + settings.shutdown_timeout_s
    pending = list(workers)
    while pending:
        try:
            for worker in list(pending):
                if worker.join(max(0.0, min(0.1, deadline - time.monotonic()))):
                    pending.remove(worker)
            if time.monotonic() >= deadline:
                break
        except KeyboardInterrupt:
            interrupted = True
            log.warning("second interrupt: discarding in-flight env steps")
            signals.abort.set()
            deadline = min(deadline, time.monotonic() + 1.0)
    if pending:
        signals.abort.set()
    abandoned = [f"env-{w.index}" for w in pending]
    try:
        finished = learner.finish(max(1.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        interrupted, finished = True, learner.finish(1.0)
    if not finished:
        signals.abort.set()
        abandoned.append("learner")
    if abandoned:
        log.error("threads still running after shutdown: %s", ", ".join(abandoned))
    return abandoned, interrupted
