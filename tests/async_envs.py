"""Stand-in blocking envs for the asynchronous actor's tests: slow, failing, countable.

`CountingEnv` writes its own identity into every observation (env index, steps it has taken,
step in the episode), so a test can match each env's steps to the replay's writes one by one.
"""

from __future__ import annotations

import _thread
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tiny import tiny_config

from hmk8s.agents.config import AgentConfig, ScheduleConfig
from hmk8s.agents.replay import Transition
from hmk8s.train.config import TrainConfig

OBS_DIM = 4
NUM_ACTIONS = 5


class CountingEnv:
    """obs = [index, steps taken so far, step in episode, resets]; truncates every ``episode``;
    reward = action / NUM_ACTIONS; the SLA counts as violated after every third step.

    ``fail_every``: every n-th step call raises; ``always_fail``: every step raises;
    ``delay_s``: sleep per step; ``gate``: an event each step waits on (a hung env).
    """

    def __init__(
        self,
        index: int,
        *,
        delay_s: float = 0.0,
        episode: int = 7,
        fail_every: int = 0,
        always_fail: bool = False,
        gate: threading.Event | None = None,
    ) -> None:
        self.index = index
        self.delay_s = delay_s
        self.episode = episode
        self.fail_every = fail_every
        self.always_fail = always_fail
        self.gate = gate
        self.steps = 0
        self.calls = 0
        self.t = 0
        self.resets = 0
        self.closed = False
        self.observation_space = gym.spaces.Box(0.0, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)

    def _obs(self) -> np.ndarray:
        return np.array([self.index, self.steps, self.t, self.resets], np.float32)

    def _info(self) -> dict:
        mask = np.ones(NUM_ACTIONS, bool)
        mask[self.steps % NUM_ACTIONS] = False
        return {
            "action_mask": mask,
            "pods": self.t,
            "latency_ratio": 0.5,
            "sla_violated": self.steps % 3 == 0,
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t = 0
        self.resets += 1
        return self._obs(), self._info()

    def step(self, action: int):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.always_fail or (self.fail_every and self.calls % self.fail_every == 0):
            raise ConnectionError(f"env {self.index}: injected API failure")
        self.steps += 1
        self.t += 1
        reward = float(action) / NUM_ACTIONS
        return self._obs(), reward, False, self.t >= self.episode, self._info()

    def close(self) -> None:
        self.closed = True


def interrupt_after(env: CountingEnv, steps: int) -> None:
    """Press Ctrl-C (a KeyboardInterrupt in the main thread) right after ``env``'s ``steps``-th
    step, so the interrupt lands while steps flow however long compiling took."""
    step = env.step

    def step_then_interrupt(action):
        out = step(action)
        if env.steps == steps:
            _thread.interrupt_main()
        return out

    env.step = step_then_interrupt


def small_agent(**changes) -> AgentConfig:
    """A learner small enough to compile and update fast in tests."""
    base = {
        "hidden": [16],
        "lr_decay_updates": 0,
        "batch_size": 8,
        "buffer_size": 4096,
        "learning_starts": 8,
        "updates_per_step": 1.0,
        "target_period": 20,
        "epsilon": ScheduleConfig(kind="linear", start=1.0, end=0.1, steps=200),
    }
    return AgentConfig(**{**base, **changes})


#: The k8s backend the stand-in envs stand for: three clusters' contexts, never reached; an
#: actor waiting on a stuck env gives up within seconds.
FAKE_K8S: dict[str, Any] = {
    "name": "k8s",
    "clusters": [{"context": "kind-a", "namespace": f"hmk8s-{k}"} for k in range(3)],
    "actor": {"max_seconds": 20.0, "shutdown_timeout_s": 10.0, "close_timeout_s": 10.0},
}


def fake_k8s(actor: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """`FAKE_K8S` with ``changes``, and ``actor`` changing single settings of its actor."""
    return {**FAKE_K8S, **changes, "actor": {**FAKE_K8S["actor"], **(actor or {})}}


def k8s_run_config(run_dir: Path | None, backend: dict[str, Any], **changes: Any) -> TrainConfig:
    """The tiny run (`tiny.tiny_config`) of `small_agent` on ``backend`` (a `fake_k8s`) in
    chunks of 20 env steps, with ``changes``."""
    return tiny_config(
        usecase="ml",
        backend=backend,
        agent=small_agent(),
        chunk_steps=20,
        run_dir=None if run_dir is None else str(run_dir),
        **changes,
    )


def written(buffer_state) -> Transition:
    """The transitions in a (never wrapped) flashbax item buffer, in write order."""
    n = int(buffer_state.current_index)
    return Transition(*(np.asarray(x)[0, :n] for x in buffer_state.experience))
