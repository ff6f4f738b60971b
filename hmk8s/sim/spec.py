"""The simulator as the trainer's `EnvSpec`: encoded observations, masks and heuristic hints."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hmk8s.encoders import get_encoder
from hmk8s.heuristics import recommend
from hmk8s.sim.env import ClusterEnv
from hmk8s.sim.params import EnvParams
from hmk8s.train.env_spec import EnvSpec, Timestep


def sim_env_spec(env: ClusterEnv, params: EnvParams, encoder: str = "onehot") -> EnvSpec:
    """Wrap the functional simulator for the trainer; resets ended episodes automatically."""
    encode = get_encoder(encoder)

    def view(obs):
        return encode(obs, params), obs.action_mask, recommend(obs, params)

    def reset(key: jax.Array):
        obs, state = env.reset(key, params)
        return (state, *view(obs))

    def step(key: jax.Array, state, action: jax.Array):
        k_step, k_reset = jax.random.split(key)
        obs, next_state, reward, terminated, truncated, info = env.step_env(
            k_step, state, action, params
        )
        reset_state, reset_obs, reset_mask, reset_hint = reset(k_reset)
        next_obs, next_mask, next_hint = view(obs)
        done = terminated | truncated
        pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(done, x, y), a, b)  # noqa: E731
        timestep = Timestep(
            obs=pick(reset_obs, next_obs),
            mask=pick(reset_mask, next_mask),
            hint=pick(reset_hint, next_hint),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=next_obs,
            next_mask=next_mask,
            next_hint=next_hint,
            metrics={k: info[k] for k in ("latency_ratio", "pods", "sla_violated", "invalid")},
        )
        return pick(reset_state, next_state), timestep

    obs_dim = int(jax.eval_shape(lambda k: reset(k)[1], jax.random.PRNGKey(0)).shape[0])
    return EnvSpec(num_actions=params.layout.num_actions, obs_dim=obs_dim, reset=reset, step=step)
