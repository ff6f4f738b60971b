"""Gymnasium environments over the simulator (and, with `backend="k8s"`, real clusters).

The observation is the encoded vector the Q-network reads; `info` carries `action_mask`,
`latency_ratio`, `pods`, `sla_violated` and `invalid`, and the structured observation is
kept in `structured_observation` for policies that read it (the baselines, the heuristic).

JAX's threads do not survive `fork`: a process forked from one where hmk8s (and JAX) runs hangs
at its first JAX call. `gym.make_vec(..., vectorization_mode="async")` forks by default on
Linux, so an env refuses to start in a forked child, naming the start methods that work
(``vector_kwargs={"context": "spawn"}`` or ``"forkserver"``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import jax
import numpy as np

from hmk8s import sim
from hmk8s.domain.encoders import get_encoder
from hmk8s.domain.episode import check_steppable
from hmk8s.domain.metrics import host_metrics
from hmk8s.domain.observation import Observation
from hmk8s.domain.settings import ENV_DEFAULTS

#: The process that imported hmk8s; another pid with the module already loaded is a fork of it.
_IMPORTED_IN = os.getpid()


class ForkedProcessError(RuntimeError):
    """An env asked for in a process forked from one where JAX runs (it would hang)."""


def check_not_forked() -> None:
    """Refuse to build an env in a forked child of the process that imported hmk8s."""
    if os.getpid() != _IMPORTED_IN:
        raise ForkedProcessError(
            "hmk8s envs cannot run in a process forked after JAX started (JAX would hang); "
            "use gym.make_vec(..., vectorization_mode='async', "
            "vector_kwargs={'context': 'spawn'}) or 'forkserver', or vectorization_mode='sync'"
        )


def _host_info(info: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "action_mask": np.asarray(info["action_mask"], dtype=bool),
        **host_metrics(info),
    }


class SimClusterEnv(gym.Env):
    """One simulated cluster set, stepped from Python (for tools that speak gymnasium)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        usecase: str | Mapping[str, Any] = "ml",
        encoder: str = ENV_DEFAULTS["encoder"],
        noop: bool = ENV_DEFAULTS["noop"],
        start: str = ENV_DEFAULTS["start"],
        episode_steps: int = ENV_DEFAULTS["episode_steps"],
    ) -> None:
        env_cfg = {"encoder": encoder, "noop": noop, "start": start, "episode_steps": episode_steps}
        self.env, self.params = sim.make(usecase, env_cfg)
        encode = get_encoder(encoder)
        self._encode = jax.jit(lambda obs: encode(obs, self.params))
        self._reset = jax.jit(lambda key: self.env.reset(key, self.params))
        self._step = jax.jit(lambda key, state, a: self.env.step_env(key, state, a, self.params))
        dim = self._encode(self._reset(jax.random.PRNGKey(0))[0]).shape[0]
        self.observation_space = gym.spaces.Box(0.0, 1.0, (dim,), np.float32)
        self.action_space = gym.spaces.Discrete(self.params.layout.num_actions)
        self._key = jax.random.PRNGKey(0)
        self._state = None
        self._ended = False
        self.structured_observation: Observation | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._key = jax.random.PRNGKey(int(self.np_random.integers(0, 2**31 - 1)))
        self._key, k_reset = jax.random.split(self._key)
        obs, self._state = self._reset(k_reset)
        self._ended = False
        self.structured_observation = obs
        info = {"action_mask": np.asarray(obs.action_mask, dtype=bool)}
        return np.asarray(self._encode(obs), np.float32), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        check_steppable(self._state is not None, self._ended)
        action = self.params.layout.check(action)
        self._key, k_step = jax.random.split(self._key)
        obs, self._state, reward, terminated, truncated, info = self._step(
            k_step, self._state, np.int32(action)
        )
        self.structured_observation = obs
        self._ended = bool(terminated) or bool(truncated)
        return (
            np.asarray(self._encode(obs), np.float32),
            float(reward),
            bool(terminated),
            bool(truncated),
            _host_info(info),
        )


def make_env(usecase: str = "ml", backend: str = "sim", **kwargs: Any) -> gym.Env:
    """Entry point of the registered ids: the same env class family for both backends."""
    check_not_forked()
    if backend == "sim":
        return SimClusterEnv(usecase=usecase, **kwargs)
    if backend == "k8s":
        from hmk8s.k8s.env import KubernetesClusterEnv

        return KubernetesClusterEnv(usecase=usecase, **kwargs)
    raise ValueError(f"unknown backend {backend!r}; expected 'sim' or 'k8s'")
