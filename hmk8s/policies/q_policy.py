"""Trained Q-networks as `Policy`s, so agents and baselines share `rollout` and the controller
acts with the same greedy choice."""

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
