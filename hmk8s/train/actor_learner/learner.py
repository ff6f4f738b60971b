"""The learner on its own thread: write env steps to the replay, update, publish parameters.

It owns the train state (Q-network, optimiser, replay, per-env books) and is its only writer,
so a snapshot between two of its iterations is consistent: every transition the books count is
in the replay. Updates follow the update-to-data ratio (``updates <= ratio * (written -
learning_starts)``); while it owes updates it stops taking env steps, so the bounded queue
fills and the env workers wait (back-pressure). Parameters are published after every burst of
updates; jax arrays are immutable, so the actor can read them without a copy.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from hmk8s.domain.metrics import STEP_METRICS
from hmk8s.train.actor_learner.core import (
    AsyncFns,
    advance_books,
    chunk_sizes,
    host_books,
    owed_updates,
    stack_transitions,
)
from hmk8s.train.actor_learner.env_worker import POLL_S, Signals, StepRecord
from hmk8s.train.state import TrainState

log = logging.getLogger(__name__)


class ParamsBox:
    """The latest published parameters and their version (number of updates behind them)."""

    def __init__(self, params: Any, version: int = 0) -> None:
        self._lock = threading.Lock()
        self._params = params
        self._version = version

    def publish(self, params: Any, version: int) -> None:
        with self._lock:
            self._params, self._version = params, version

    def latest(self) -> tuple[Any, int]:
        with self._lock:
            return self._params, self._version


@dataclass
class Window:
    """What the learner saw since its last log row."""

    steps: int = 0
    updates: int = 0
    loss: float = 0.0
    episodes: int = 0
    returns: float = 0.0
    started: float = field(default_factory=time.monotonic)
    metrics: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEP_METRICS, 0.0))


class LearnerThread:
    """Runs `AsyncFns.add` and `AsyncFns.learn` on a thread until told to finish."""

    def __init__(
        self,
        fns: AsyncFns,
        state: TrainState,
        records: queue.Queue[StepRecord],
        params: ParamsBox,
        signals: Signals,
        *,
        ratio: float,
        burst: int = 8,
        max_ingest: int = 256,
        on_write: Callable[[StepRecord, Any], None] | None = None,
        on_checkpoint: Callable[[TrainState], None] | None = None,
        checkpoint_every: int = 0,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        log_every: int = 0,
    ) -> None:
        self.fns = fns
        self.state = state._replace(env_state=host_books(state.env_state))
        self.records = records
        self.params = params
        self.signals = signals
        self.ratio = ratio
        self.burst = burst
        self.max_ingest = max_ingest
        self.on_write = on_write
        self.on_checkpoint = on_checkpoint
        self.checkpoint_every = checkpoint_every
        self.on_log = on_log
        self.log_every = log_every
        self.written = int(np.asarray(state.env_steps))
        self.updates = int(np.asarray(state.learner.updates))
        self.busy_s = 0.0
        self.error: BaseException | None = None
        self._next_checkpoint = self._next_multiple(checkpoint_every)
        self._next_log = self._next_multiple(log_every)
        self._window = Window()
        self._finish = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)

    def _next_multiple(self, every: int) -> float:
        return (self.written // every + 1) * every if every > 0 else math.inf

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float) -> bool:
        """Write what is still queued, then end; False when the thread did not end in time."""
        self._finish.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.error = exc
            log.error("learner stopped on %r", exc)
            self.signals.abort.set()
            self.signals.stop.set()

    def _loop(self) -> None:
        while not self.signals.abort.is_set():
            owed = self._owed()
            if owed >= self.burst and not self._finish.is_set():
                self._learn(self.burst)
                continue
            wrote = self._ingest(block=owed == 0)
            if self._finish.is_set():
                if wrote == 0:
                    return
                continue
            self._learn(min(self._owed(), self.burst))

    def _owed(self) -> int:
        return owed_updates(self.written, self.updates, self.ratio, self.fns.learning_starts)

    def _ingest(self, block: bool) -> int:
        """Move the records queued now (at most `max_ingest`) into the replay; the number
        written. Records queued meanwhile wait, so the learner runs at most one queue ahead."""
        items: list[StepRecord] = []
        limit = min(self.max_ingest, max(1, self.records.qsize()))
        try:
            if block and not self._finish.is_set():
                items.append(self.records.get(timeout=POLL_S))
            while len(items) < limit:
                items.append(self.records.get_nowait())
        except queue.Empty:
            pass
        if items:
            self._write(items)
        return len(items)

    def _write(self, items: list[StepRecord]) -> None:
        state = self.state
        batch = stack_transitions([r.transition for r in items])
        flags = [r.info.get("sla_violated") for r in items]
        violated = None if None in flags else np.array(flags, bool)
        buffer, start = state.buffer, 0
        for size in chunk_sizes(len(items), self.fns.num_envs * 4):
            part = jax.tree.map(lambda x, s=start, n=size: x[s : s + n], (batch, violated))
            buffer = self.fns.add(buffer, *part)
            start += size
        books, obs, mask, hint = state.env_state, state.obs, state.mask, state.hint
        obs, mask, hint = obs.copy(), mask.copy(), hint.copy()
        for record in items:
            t, env = record.transition, record.env
            books, place = advance_books(books, env, float(t.reward), record.done, record.first)
            obs[env], mask[env], hint[env] = t.next_obs, t.next_mask, t.next_hint
            self._account(record, place.episode_return)
            if self.on_write is not None:
                self.on_write(record, place)
        self.written += len(items)
        self.state = state._replace(
            buffer=buffer,
            env_state=books,
            obs=obs,
            mask=mask,
            hint=hint,
            episode_return=books.episode_return.astype(np.float32),
            env_steps=np.asarray(self.written, np.int32),
        )
        if self.written >= self._next_log:
            self._emit_log()
        if self.written >= self._next_checkpoint and self.on_checkpoint is not None:
            self._next_checkpoint = self._next_multiple(self.checkpoint_every)
            self.on_checkpoint(self.state)

    def _account(self, record: StepRecord, episode_return: float) -> None:
        w = self._window
        w.steps += 1
        for name in STEP_METRICS:
            w.metrics[name] += float(record.info.get(name, 0.0))
        if record.done:
            w.episodes += 1
            w.returns += episode_return

    def _learn(self, n: int) -> None:
        if n <= 0:
            return
        started = time.monotonic()
        state, losses = self.state, []
        learner, rng, buffer = state.learner, state.rng, state.buffer
        env_steps = np.asarray(self.written, np.int32)
        for _ in range(n):
            rng, key = jax.random.split(rng)
            learner, buffer, loss = self.fns.learn(learner, buffer, key, env_steps)
            losses.append(loss)
        total = float(np.sum(jax.device_get(losses)))
        self.state = state._replace(learner=learner, rng=rng, buffer=buffer)
        self.updates += n
        self.params.publish(learner.params, self.updates)
        self.busy_s += time.monotonic() - started
        self._window.updates += n
        self._window.loss += total

    def _emit_log(self) -> None:
        self._next_log = self._next_multiple(self.log_every)
        w, self._window = self._window, Window()
        if self.on_log is None:
            return
        elapsed = max(time.monotonic() - w.started, 1e-9)
        steps = np.asarray(self.written, np.int32)
        row: dict[str, Any] = {
            "seed": 0,
            "env_steps": self.written,
            "updates": self.updates,
            "episodes": w.episodes,
            "episode_return": w.returns / w.episodes if w.episodes else math.nan,
            "loss": w.loss / w.updates if w.updates else math.nan,
            "epsilon": float(self.fns.epsilon(steps)),
            "xi": float(self.fns.xi(steps)),
            "sps": w.steps / elapsed,
        }
        for name, total in w.metrics.items():
            row[STEP_METRICS[name].column] = total / max(w.steps, 1)
        self.on_log(row)
