"""One blocking environment on its own thread: reset, wait for an action, step, hand it on.

A Kubernetes step blocks for seconds (write, wait, measure), so each env gets a thread that
does nothing but that; the actor and the learner never wait on it. The env is anything with
gymnasium's ``reset``/``step`` that puts the action mask in ``info["action_mask"]``; the
heuristic hint comes from a separate function of the env. A failing env is reset and retried
with a bounded backoff, and retired after too many failures in a row, so it stalls nobody.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hmk8s.agents.replay import Transition
from hmk8s.domain.metrics import STEP_METRICS

log = logging.getLogger(__name__)
POLL_S = 0.05


class BlockingEnv(Protocol):
    """What the actor needs of an environment (gymnasium's API)."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple: ...

    def step(self, action: Any) -> tuple: ...


HintFn = Callable[[Any], int]


def no_hint(env: Any) -> int:
    """The pure-DQN hint: the heuristic recommends nothing."""
    del env
    return -1


@dataclass(frozen=True)
class Ready:
    """An env waiting for its next action."""

    env: int
    obs: np.ndarray
    mask: np.ndarray
    hint: int


@dataclass(frozen=True)
class StepRecord:
    """One finished env step: the replay transition plus what the books and history need."""

    env: int
    transition: Transition
    hint: int
    first: bool
    done: bool
    truncated: bool
    step_s: float
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Signals:
    """Shared shutdown flags: ``stop`` finishes in-flight steps, ``abort`` discards them."""

    stop: threading.Event = field(default_factory=threading.Event)
    abort: threading.Event = field(default_factory=threading.Event)


def episode_seed(seed: int, env: int, start_steps: int, attempt: int) -> int:
    """A reset seed per (run seed, env, env steps when this run started, reset of this run):
    distinct for every reset, across resumes too, and reproducible."""
    return int(np.random.SeedSequence([seed, env, start_steps, attempt]).generate_state(1)[0])


def _history_info(info: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: info[k] for k in STEP_METRICS if k in info}
    if "api_errors" in info:
        out["api_errors"] = len(info["api_errors"])
    if "assumed" in info:
        out["assumed"] = int(sum(info["assumed"].values()))
    return out


class EnvWorker:
    """Steps env ``index`` whenever the actor hands it an action."""

    def __init__(
        self,
        index: int,
        env: BlockingEnv,
        hint_fn: HintFn,
        ready: queue.Queue[Ready],
        records: queue.Queue[StepRecord],
        signals: Signals,
        *,
        seed: int = 0,
        start_steps: int = 0,
        max_failures: int = 5,
        backoff_s: float = 1.0,
    ) -> None:
        self.index = index
        self.env = env
        self.hint_fn = hint_fn
        self.ready = ready
        self.records = records
        self.signals = signals
        self.seed = seed
        self.start_steps = start_steps
        self.resets = 0
        self.max_failures = max_failures
        self.backoff_s = backoff_s
        self.failures = 0
        self.steps = 0
        self.busy = False
        self.error: BaseException | None = None
        self._actions: queue.Queue[int] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name=f"env-{index}", daemon=True)
        self._obs: np.ndarray | None = None
        self._hint = -1
        self._first = True
        self._pending: Ready | None = None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def give(self, action: int) -> None:
        """The actor's action for the observation this worker last posted."""
        self.busy = True
        self._actions.put_nowait(action)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread to end; False when it is still stepping."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        consecutive = 0
        needs_reset = True
        while not self.signals.stop.is_set():
            try:
                if needs_reset:
                    self._reset()
                    needs_reset = False
                action = self._wait_action()
                if action is None:
                    return
                record = self._step(action)
            except Exception as exc:
                self.failures += 1
                self.busy = False
                consecutive += 1
                log.warning("env %d failed (%d in a row): %r", self.index, consecutive, exc)
                if consecutive >= self.max_failures or getattr(exc, "fatal", False):
                    self.error = exc
                    log.error(
                        "env %d retired after %d failures in a row (last: %r); resume= continues "
                        "the run from its last checkpoint once its clusters are back",
                        self.index,
                        consecutive,
                        exc,
                    )
                    return
                self.signals.stop.wait(min(self.backoff_s * 2 ** (consecutive - 1), 30.0))
                needs_reset = True
                continue
            consecutive = 0
            if not self._hand_on(record):
                return
            needs_reset = record.done

    def _reset(self) -> None:
        seed = episode_seed(self.seed, self.index, self.start_steps, self.resets)
        self.resets += 1
        obs, info = self.env.reset(seed=seed)
        self._obs = np.asarray(obs, np.float32)
        self._first = True
        self._post(info)

    def _post(self, info: Mapping[str, Any]) -> None:
        mask = np.asarray(info["action_mask"], bool)
        self._hint = int(self.hint_fn(self.env))
        self.ready.put(Ready(self.index, self._obs, mask, self._hint))

    def _wait_action(self) -> int | None:
        while not self.signals.stop.is_set():
            try:
                return self._actions.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    def _step(self, action: int) -> StepRecord:
        started = time.monotonic()
        obs, reward, terminated, truncated, info = self.env.step(action)
        next_obs = np.asarray(obs, np.float32)
        next_mask = np.asarray(info["action_mask"], bool)
        next_hint = int(self.hint_fn(self.env))
        transition = Transition(
            obs=self._obs,
            action=np.int32(action),
            reward=np.float32(reward),
            terminated=np.bool_(terminated),
            next_obs=next_obs,
            next_mask=next_mask,
            next_hint=np.int32(next_hint),
        )
        done = bool(terminated or truncated)
        record = StepRecord(
            env=self.index,
            transition=transition,
            hint=self._hint,
            first=self._first,
            done=done,
            truncated=bool(truncated),
            step_s=time.monotonic() - started,
            info=_history_info(info),
        )
        self._obs, self._hint, self._first = next_obs, next_hint, False
        self._pending = None if done else Ready(self.index, next_obs, next_mask, next_hint)
        return record

    def _hand_on(self, record: StepRecord) -> bool:
        """Queue the record (blocking while the learner is behind), then post the next obs."""
        while not self.signals.abort.is_set():
            try:
                self.records.put(record, timeout=POLL_S)
            except queue.Full:
                continue
            self.steps += 1
            self.busy = False
            if self._pending is not None:
                self.ready.put(self._pending)
            return True
        return False
