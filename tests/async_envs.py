"""Stand-in blocking envs for the asynchronous actor's tests: slow, failing, countable.

`CountingEnv` writes its own identity into every observation (env index, steps it has taken,
step in the episode), so a test can match each env's steps to the replay's writes one by one.
"""

from __future__ import annotations

import _thread
import threading
import time

import gymnasium as gym
import numpy as np

from hmk8s.agents.config import AgentConfig, ScheduleConfig
from hmk8s.agents.replay import Transition

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


def written(buffer_state) -> Transition:
    """The transitions in a (never wrapped) flashbax item buffer, in write order."""
    n = int(buffer_state.current_index)
    return Transition(*(np.asarray(x)[0, :n] for x in buffer_state.experience))
