"""Greedy evaluation of any policy on episodes that are identical for every policy, and of
every seed of a trained agent at once (`make_seed_rollout`).

The env's own randomness (load, noise, re-routing) is drawn from keys that depend only on
`key`, the episode and the step, never on the policy, so two policies evaluated with the same
key face the same request-rate traces from the same start placements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from hmk8s.domain.metrics import STEP_METRICS, summarise
from hmk8s.domain.observation import Observation
from hmk8s.domain.params import EnvParams
from hmk8s.domain.placement import scale_instances
from hmk8s.domain.settings import ENV_DEFAULTS
from hmk8s.policies.baselines import Policy
from hmk8s.policies.q_policy import ApplyFn, q_policy
from hmk8s.sim.env import ClusterEnv
from hmk8s.sim.scenarios import shifted

#: A rollout program is compiled once and run a few times, so compiling is most of its cost. The
#: CPU backend's optimisation level 1 compiles one 30-50 % faster than the default level, with
#: bit-identical records (measured on the ML and STREAM rollouts of the Q and HPA policies).
#: JAX takes compiler options on the outermost `jax.jit` only: callers that compile a rollout
#: pass them there.
ROLLOUT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def rollout(
    env: ClusterEnv, params: EnvParams, policy: Policy, key: jax.Array, num_episodes: int
) -> dict[str, jax.Array]:
    """Run `num_episodes` full episodes in parallel; every array is [episodes, steps, ...].

    Keys: reward, latency_ratio (request-weighted), sla_violated, pods, invalid, action,
    rates [P], pods_per_cluster [K], proxy_latency_ratio [P].
    """
    env_key, policy_key = jax.random.split(key)
    episode_keys = jax.random.split(env_key, num_episodes)
    policy_keys = jax.random.split(policy_key, num_episodes)

    def episode(env_k: jax.Array, pol_k: jax.Array) -> dict[str, jax.Array]:
        reset_k, steps_k = jax.random.split(env_k)
        obs, state = env.reset(reset_k, params)
        step_keys = jax.random.split(steps_k, params.episode_steps)
        act_keys = jax.random.split(pol_k, params.episode_steps)

        def body(carry: tuple[Observation, Any, Any], keys: tuple[jax.Array, jax.Array]):
            obs, state, pstate = carry
            k_env, k_act = keys
            action, pstate = policy.act(k_act, pstate, obs, params)
            if policy.scales:
                action, replicas = action
                state = scale_instances(state, replicas, params)
            obs, state, reward, _, _, info = env.step_env(k_env, state, action, params)
            record = {
                "reward": reward,
                **{name: info[name] for name in STEP_METRICS},
                "action": action,
                "rates": obs.rates,
                "pods_per_cluster": obs.pods,
                "proxy_latency_ratio": obs.latency_ratio,
            }
            return (obs, state, pstate), record

        carry = (obs, state, policy.init(params))
        _, records = jax.lax.scan(body, carry, (step_keys, act_keys))
        return records

    return jax.jit(jax.vmap(episode))(episode_keys, policy_keys)


def evaluate_policy(
    env: ClusterEnv, params: EnvParams, policy: Policy, key: jax.Array, num_episodes: int
) -> dict[str, Any]:
    """`summarise(rollout(...))`: the metrics of one policy on `num_episodes` episodes."""
    run = jax.jit(
        lambda k: rollout(env, params, policy, k, num_episodes),
        compiler_options=ROLLOUT_COMPILER_OPTIONS,
    )
    return summarise(run(key))


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
