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
from gymnasium.error import ResetNeeded

from hmk8s.observation import Observation, build_observation, chain_latency_ratio
from hmk8s.reward import reward
from hmk8s.sim.dynamics import advance, apply_action, measure
from hmk8s.sim.params import EnvParams
from hmk8s.sim.state import EnvState


def initial_placement(key: jax.Array, params: EnvParams) -> tuple[jax.Array, jax.Array]:
    """Ready replicas [K, F, C] and routes [P, F] an episode starts from.

    empty:   only the proxies exist (the original system's start); every hop is broken.
    minimal: one ready `medium` pod of each chain function on proxy 0's home cluster, every
             proxy routed to it.
    random:  per chain function one instance of 1-2 pods and, with probability 1/2, a second
             instance of one pod, on random clusters and configs; each proxy routed to a random
             one of them. Falls back to `minimal` if a cluster would exceed `max_pods`.
    """
    lay = params.layout
    k, f, c, p = lay.clusters, lay.functions, lay.configs, lay.proxies
    chain = jnp.asarray(params.chain)
    ready = jnp.zeros((k, f, c), jnp.int32)
    routes = jnp.full((p, f), -1, jnp.int32)
    if params.start == "empty":
        return ready, routes
    home0, cfg = params.home[0], params.default_config
    minimal_ready = ready.at[home0, chain, cfg].set(1)
    minimal_routes = routes.at[:, chain].set(home0 * c + cfg)
    if params.start == "minimal":
        return minimal_ready, minimal_routes
    keys = jax.random.split(key, 6)
    n = len(params.chain)
    first = jax.random.randint(keys[0], (n,), 0, k * c)
    second = jax.random.randint(keys[1], (n,), 0, k * c)
    first_pods = jax.random.randint(keys[2], (n,), 1, 3)
    has_second = jax.random.bernoulli(keys[3], 0.5, (n,)) & (second != first)
    flat = jnp.zeros((f, k * c), jnp.int32)
    flat = flat.at[chain, first].add(first_pods).at[chain, second].add(has_second.astype(jnp.int32))
    ready = jnp.transpose(flat.reshape(f, k, c), (1, 0, 2))
    pick_second = jax.random.bernoulli(keys[4], 0.5, (p, n)) & has_second[None]
    routes = routes.at[:, chain].set(jnp.where(pick_second, second[None], first[None]))
    fits = jnp.all(ready.sum(axis=(1, 2)) <= params.max_pods)
    return jnp.where(fits, ready, minimal_ready), jnp.where(fits, routes, minimal_routes)


def check_steppable(started: bool, ended: bool) -> None:
    """Gymnasium's order, enforced: `reset()` before the first `step()` and again once an
    episode has ended. Stepping on would run a finished episode with `truncated` stuck at True,
    which a training loop would record as transitions of no episode at all."""
    if not started:
        raise ResetNeeded("call reset() before step()")
    if ended:
        raise ResetNeeded("the episode has ended (terminated or truncated): call reset() first")


def auto_reset(done: jax.Array, fresh: Any, current: Any) -> Any:
    """``fresh`` where the episode ended, else ``current`` (two pytrees of one structure): the
    one auto-reset rule, shared by `ClusterEnv.step` and the trainer's env spec."""
    return jax.tree.map(lambda x, y: jnp.where(done, x, y), fresh, current)


class ClusterEnv:
    """Functional environment over `EnvParams`; holds no state of its own."""

    name = "hmk8s-sim"

    def num_actions(self, params: EnvParams) -> int:
        return params.layout.num_actions

    def get_obs(self, state: EnvState, params: EnvParams) -> Observation:
        return build_observation(
            params.layout,
            ready=state.ready,
            replicas=state.replicas,
            routes=state.routes,
            measurement=state.measurement,
            sla_s=params.sla_s,
            max_pods=params.max_pods,
            in_chain=params.in_chain,
        )

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[Observation, EnvState]:
        """A new episode; its first observation measures the start placement's load."""
        k_place, k_offset, k_measure = jax.random.split(key, 3)
        lay = params.layout
        ready, routes = initial_placement(k_place, params)
        shape = (lay.clusters, lay.functions, lay.configs)
        state = EnvState(
            ready=ready,
            pending=jnp.zeros((*shape, params.pending_depth), jnp.int32),
            routes=routes,
            backlog=jnp.zeros(shape, jnp.float32),
            burst_left=jnp.zeros((lay.proxies,), jnp.int32),
            burst_level=jnp.ones((lay.proxies,), jnp.float32),
            trace_offset=jax.random.randint(k_offset, (), 0, params.trace.shape[0]),
            time=jnp.zeros((), jnp.int32),
            measurement=None,
        )
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
            "latency_ratio": ratio,
            "pods": pods,
            "sla_violated": ratio > 1.0,
            "invalid": invalid,
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
