"""Trained Q-networks as `Policy`s, so agents and baselines share `rollout`.

Every seed's agent is evaluated on the same episodes as every baseline: `rollout` draws the
env's randomness from its key alone, and `rollout_seeds` hands every seed that same key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hmk8s.agents.dqn import greedy_action
from hmk8s.domain.encoders import get_encoder
from hmk8s.domain.params import EnvParams
from hmk8s.domain.settings import ENV_DEFAULTS
from hmk8s.policies.baselines import Policy
from hmk8s.policies.heuristics import recommend
from hmk8s.policies.rollout import ROLLOUT_COMPILER_OPTIONS, rollout
from hmk8s.sim.env import ClusterEnv
from hmk8s.sim.scenarios import shifted

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def q_policy(
    apply_fn: ApplyFn,
    q_params: Any,
    encoder: str = ENV_DEFAULTS["encoder"],
    heuristic_bonus: float | jax.Array = 0.0,
) -> Policy:
    """Greedy over the actions the mask allows: ``argmax_a [Q(encode(s), a) + b H(s, a)]`` with
    ``H`` the rulebook's one-hot recommendation and ``b = heuristic_bonus``. A DQN agent has
    ``b = 0``; a trained HAQL agent has ``b = deployed_xi * eta``
    (`hmk8s.agents.config.deployed_bonus`: by default ``xi_end * eta``, the way it acts at the end
    of training), and one still training ``b = xi_t * eta`` (`heuristic_bonus`)."""
    encode = get_encoder(encoder)

    def act(key: jax.Array, pstate: Any, obs: Any, params: EnvParams):
        q = apply_fn(q_params, encode(obs, params))
        action = greedy_action(q, obs.action_mask, recommend(obs, params), heuristic_bonus)
        return action.astype(jnp.int32), pstate

    return Policy(init=lambda params: jnp.zeros((), jnp.int32), act=act)


def make_seed_rollout(
    env: ClusterEnv,
    params: EnvParams,
    apply_fn: ApplyFn,
    num_episodes: int,
    encoder: str = ENV_DEFAULTS["encoder"],
) -> Callable[..., dict[str, jax.Array]]:
    """``run(seed_params, key, heuristic_bonus=0.0, shifts=None)``: `rollout` of each seed's
    greedy agent (``seed_params`` stacked on a leading seed axis, `q_policy` with
    ``heuristic_bonus``) on the same ``num_episodes`` episodes drawn from ``key``; every array is
    [seeds, episodes, steps, ...], or [scenarios, seeds, ...] on the shifted loads ``shifts``
    (`hmk8s.sim.scenarios.stacked`). Compiled once per kind, so a learning curve re-uses it
    whatever the bonus."""

    def on(p: EnvParams, seed_params: Any, key: jax.Array, bonus: Any) -> dict[str, jax.Array]:
        def one(q_params: Any) -> dict[str, jax.Array]:
            return rollout(env, p, q_policy(apply_fn, q_params, encoder, bonus), key, num_episodes)

        return jax.vmap(one)(seed_params)

    def run(
        seed_params: Any,
        key: jax.Array,
        heuristic_bonus: Any = 0.0,
        shifts: dict[str, jax.Array] | None = None,
    ) -> dict[str, jax.Array]:
        if shifts is None:
            return on(params, seed_params, key, heuristic_bonus)
        return jax.vmap(lambda s: on(shifted(params, s), seed_params, key, heuristic_bonus))(shifts)

    return jax.jit(run, compiler_options=ROLLOUT_COMPILER_OPTIONS)
