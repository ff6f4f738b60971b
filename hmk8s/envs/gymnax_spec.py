"""Adapter from any discrete-action gymnax environment to an `EnvSpec`.

It lets the trainer be checked on problems with known solutions (CartPole)
and benchmarked against a host-stepped gymnasium loop on the same task. All
actions are valid and there is no heuristic (hint = -1).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmk8s.envs.spec import EnvSpec, Timestep


def gymnax_env_spec(env: Any, params: Any | None = None) -> EnvSpec:
    """Wrap a gymnax ``Environment`` with a ``Discrete`` action space."""
    params = env.default_params if params is None else params
    num_actions = int(env.action_space(params).n)
    obs_dim = int(np.prod(env.observation_space(params).shape))
    mask = jnp.ones((num_actions,), jnp.bool_)
    hint = jnp.asarray(-1, jnp.int32)

    def reset(key: jax.Array):
        obs, state = env.reset(key, params)
        return state, obs.reshape(-1).astype(jnp.float32), mask, hint

    def step(key: jax.Array, state: Any, action: jax.Array):
        obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
        return state, Timestep(
            obs=obs.reshape(-1).astype(jnp.float32),
            mask=mask,
            hint=hint,
            reward=jnp.asarray(reward, jnp.float32),
            terminated=jnp.asarray(terminated, jnp.bool_),
            truncated=jnp.asarray(truncated, jnp.bool_) & ~jnp.asarray(terminated, jnp.bool_),
            next_obs=info["final_observation"].reshape(-1).astype(jnp.float32),
            next_mask=mask,
            next_hint=hint,
            metrics={},
        )

    return EnvSpec(num_actions=num_actions, obs_dim=obs_dim, reset=reset, step=step)
