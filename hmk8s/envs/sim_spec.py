"""The simulator as the trainer's `EnvSpec`: encoded observations, masks and heuristic hints."""

from __future__ import annotations

import jax

from hmk8s.domain.encoders import get_encoder
from hmk8s.domain.episode import auto_reset
from hmk8s.domain.metrics import STEP_METRICS
from hmk8s.domain.params import EnvParams
from hmk8s.domain.settings import ENV_DEFAULTS
from hmk8s.envs.spec import EnvSpec, Timestep
from hmk8s.policies.heuristics import recommend
from hmk8s.sim.env import ClusterEnv


def sim_env_spec(
    env: ClusterEnv, params: EnvParams, encoder: str = ENV_DEFAULTS["encoder"]
) -> EnvSpec:
    """Wrap the functional simulator for the trainer; resets ended episodes automatically."""
    encode = get_encoder(encoder)

    def view(obs):
        return encode(obs, params), obs.action_mask, recommend(obs, params)

    def reset(key: jax.Array):
        obs, state = env.reset(key, params)
        return (state, *view(obs))

    def step(key: jax.Array, state, action: jax.Array):
        k_step, k_reset = jax.random.split(key)
        successor, next_state, reward, terminated, truncated, info = env.step_env(
            k_step, state, action, params
        )
        reset_state, reset_obs, reset_mask, reset_hint = reset(k_reset)
        next_view = view(successor)
        (obs, mask, hint), state = auto_reset(
            terminated | truncated,
            ((reset_obs, reset_mask, reset_hint), reset_state),
            (next_view, next_state),
        )
        timestep = Timestep(
            obs=obs,
            mask=mask,
            hint=hint,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=next_view[0],
            next_mask=next_view[1],
            next_hint=next_view[2],
            metrics={k: info[k] for k in STEP_METRICS},
        )
        return state, timestep

    obs_dim = int(jax.eval_shape(lambda k: reset(k)[1], jax.random.PRNGKey(0)).shape[0])
    return EnvSpec(num_actions=params.layout.num_actions, obs_dim=obs_dim, reset=reset, step=step)
