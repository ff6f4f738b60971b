"""The simulator as a gymnax-style functional environment.

`reset(key, params) -> (obs, state)` and
`step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)`
are pure, so they `jit` and `vmap` over thousands of environments. `step` resets an
ended episode automatically (as gymnax does); `step_env` does not, for callers that need
the true successor observation. Episodes never terminate, they are truncated after
`episode_steps` steps: the clusters keep running.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from hmk8s.domain.episode import auto_reset
from hmk8s.domain.metrics import step_metrics
from hmk8s.domain.observation import Observation, chain_latency_ratio
from hmk8s.domain.params import EnvParams
from hmk8s.domain.placement import apply_action, start_state
from hmk8s.domain.reward import reward
from hmk8s.domain.state import EnvState, observe
from hmk8s.sim.dynamics import advance, measure


class ClusterEnv:
    """Functional environment over `EnvParams`; holds no state of its own."""

    name = "hmk8s-sim"

    def num_actions(self, params: EnvParams) -> int:
        return params.layout.num_actions

    def get_obs(self, state: EnvState, params: EnvParams) -> Observation:
        return observe(state, params)

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[Observation, EnvState]:
        """A new episode; its first observation measures the start placement's load."""
        state = start_state(key, params)
        k_measure = jax.random.split(key, 3)[2]
        measurement, _, _, _ = measure(k_measure, state, params)
        state = state.replace(measurement=measurement)
        return self.get_obs(state, params), state

    def step_env(
        self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
    ) -> tuple[Observation, EnvState, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
        """One step without automatic reset."""
        k_action, k_advance = jax.random.split(key)
        action = jnp.asarray(action, jnp.int32)
        state, invalid = apply_action(k_action, state, action, params)
        state = advance(k_advance, state, params)
        obs = self.get_obs(state, params)
        ratio = chain_latency_ratio(obs)
        pods = obs.pods.sum()
        r = reward(pods, ratio, alpha=params.alpha, beta=params.beta, pods_max=params.pods_max)
        truncated = state.time >= params.episode_steps
        info = {
            "action_mask": obs.action_mask,
            **step_metrics(ratio, pods, invalid),
        }
        return obs, state, r, jnp.zeros((), bool), truncated, info

    def step(
        self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
    ) -> tuple[Observation, EnvState, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
        """One step; an ended episode is replaced by a fresh one (gymnax's auto-reset)."""
        k_step, k_reset = jax.random.split(key)
        obs, next_state, r, terminated, truncated, info = self.step_env(
            k_step, state, action, params
        )
        fresh = self.reset(k_reset, params)
        obs, state = auto_reset(terminated | truncated, fresh, (obs, next_state))
        return obs, state, r, terminated, truncated, info
