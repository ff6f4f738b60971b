"""The counting env and the small agent the Anakin loop's tests train on it: every transition
the loop writes can be worked out from the step count alone."""

from __future__ import annotations

import jax.numpy as jnp

from hmk8s.agents.config import AgentConfig
from hmk8s.envs.spec import EnvSpec, Timestep

EPISODE = 5  # the counting env's episode length


def counting_env(terminal: bool) -> EnvSpec:
    """obs = [t, 1]; reward = action; the episode ends when t reaches EPISODE (terminated or
    truncated); action 1 is invalid at t = 1; the hint is t % 2."""

    def view(t):
        obs = jnp.stack([t.astype(jnp.float32), jnp.float32(1.0)])
        return obs, jnp.stack([jnp.bool_(True), t != 1]), (t % 2).astype(jnp.int32)

    def reset(key):
        t = jnp.int32(0)
        return (t, *view(t))

    def step(key, t, action):
        nxt = t + 1
        end = nxt == EPISODE
        obs, mask, hint = view(nxt)
        r_obs, r_mask, r_hint = view(jnp.int32(0))
        return jnp.where(end, 0, nxt), Timestep(
            obs=jnp.where(end, r_obs, obs),
            mask=jnp.where(end, r_mask, mask),
            hint=jnp.where(end, r_hint, hint),
            reward=action.astype(jnp.float32),
            terminated=end & terminal,
            truncated=end & (not terminal),
            next_obs=obs,
            next_mask=mask,
            next_hint=hint,
            metrics={"pods": nxt.astype(jnp.float32)},
        )

    return EnvSpec(num_actions=2, obs_dim=2, reset=reset, step=step)


SMALL = AgentConfig(
    hidden=[8],
    batch_size=4,
    buffer_size=64,
    learning_starts=8,
    updates_per_step=0.25,  # one vector step and one update per iteration of 3 envs
    lr_decay_updates=0,
)
