"""Baseline policies: random, static (an operator's fixed placement), heuristic, and hpa.

A `Policy` is a pair of pure functions, so the same baseline runs vmapped on the JAX env
and, one observation at a time, on the gymnasium env (whose `structured_observation`
attribute carries the `Observation`):

    pstate = policy.init(params)
    action, pstate = policy.act(key, pstate, obs, params)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from hmk8s.observation import Observation
from hmk8s.policies.heuristics import recommend
from hmk8s.sim.params import EnvParams
from hmk8s.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE


class Policy(NamedTuple):
    init: Callable[[EnvParams], Any]
    act: Callable[[jax.Array, Any, Observation, EnvParams], tuple[jax.Array, Any]]


def _stateless(choose: Callable[[jax.Array, Observation, EnvParams], jax.Array]) -> Policy:
    return Policy(
        init=lambda params: jnp.zeros((), jnp.int32),
        act=lambda key, pstate, obs, params: (choose(key, obs, params), pstate),
    )


def random_policy() -> Policy:
    """Uniform over the actions the mask allows."""

    def choose(key, obs, params):
        scores = jax.random.uniform(key, obs.action_mask.shape)
        return jnp.argmax(jnp.where(obs.action_mask, scores, -1.0)).astype(jnp.int32)

    return _stateless(choose)


def heuristic_policy() -> Policy:
    """The rulebook alone: argmax H(s, .)."""
    return _stateless(lambda key, obs, params: recommend(obs, params))


def _first(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flat index of the first True of `mask`, and whether there is one."""
    return jnp.argmax(mask.reshape(-1)), mask.any()


def static_target(params: EnvParams, headroom: float = 0.7) -> jax.Array:
    """The operator's fixed placement: on each proxy home cluster, one `medium` instance of each
    chain function sized for the peak diurnal load of the proxies homed there at `headroom`
    utilisation, capped so the chain fits the cluster. Returns target replicas [K, F, C]."""
    lay = params.layout
    chain = jnp.asarray(params.chain)
    peak = params.base_rate * (1.0 + params.diurnal_amplitude)
    per_cluster = jnp.zeros(lay.clusters).at[params.home].add(peak)
    mu = params.mu[chain, params.default_config]
    need = jnp.ceil(per_cluster[:, None] / (mu[None, :] * headroom)).astype(jnp.int32)
    cap = params.max_pods // len(params.chain)
    need = jnp.where(per_cluster[:, None] > 0, jnp.clip(need, 1, cap), 0)
    return (
        jnp.zeros((lay.clusters, lay.functions, lay.configs), jnp.int32)
        .at[:, chain, params.default_config]
        .set(need)
    )


def static_policy(headroom: float = 0.7) -> Policy:
    """Drive the placement to `static_target`, one action a step, then hold it."""

    def choose(key, obs, params):
        lay = params.layout
        c_n = lay.configs
        target = static_target(params, headroom)
        chain = jnp.asarray(params.chain)
        noop = jnp.int32(lay.noop_index)
        short, any_short = _first(obs.replicas < target)
        k1, rest = short // (lay.functions * c_n), short % (lay.functions * c_n)
        p1 = jnp.argmax(params.home == k1)
        deploy = lay.encode(k1, OP_DEPLOY, rest % c_n, rest // c_n, p1)
        home_inst = params.home[:, None] * c_n + params.default_config
        wrong = obs.routes[:, chain] != home_inst
        flat, any_wrong = _first(wrong & (target[params.home][:, chain, params.default_config] > 0))
        p2, j2 = flat // len(params.chain), flat % len(params.chain)
        assign = lay.encode(params.home[p2], OP_ASSIGN, params.default_config, chain[j2], p2)
        extra, any_extra = _first(obs.replicas > target)
        k3, rest3 = extra // (lay.functions * c_n), extra % (lay.functions * c_n)
        remove = lay.encode(k3, OP_REMOVE, rest3 % c_n, rest3 // c_n, 0)
        action = jnp.where(any_extra, remove, noop)
        action = jnp.where(any_wrong, assign, action)
        action = jnp.where(any_short, deploy, action)
        return jnp.where(obs.action_mask[jnp.maximum(action, 0)], action, noop).astype(jnp.int32)

    return _stateless(choose)


@struct.dataclass
class HPAState:
    """Recent desired-replica recommendations per instance, for the scale-down window."""

    history: jax.Array
    cursor: jax.Array


def hpa_desired(
    replicas: jax.Array, utilisation: jax.Array, target: float, tolerance: float = 0.1
) -> jax.Array:
    """Kubernetes' HPA rule per instance: ceil(replicas * utilisation / target), unchanged while
    |utilisation / target - 1| <= tolerance, at least 1, and at most the default scale-up
    policy allows per period: max(replicas + 4, 2 * replicas)."""
    ratio = utilisation / target
    desired = jnp.ceil(replicas * ratio).astype(jnp.int32)
    desired = jnp.where(jnp.abs(ratio - 1.0) <= tolerance, replicas, desired)
    desired = jnp.minimum(desired, jnp.maximum(replicas + 4, 2 * replicas))
    return jnp.where(replicas > 0, jnp.maximum(desired, 1), 0)


def hpa_policy(
    target_utilisation: float = 0.8, stabilisation_s: float = 300.0, tolerance: float = 0.1
) -> Policy:
    """The Horizontal Pod Autoscaler on every instance, one replica per step.

    Utilisation is CPU usage over CPU request, as the HPA reads it. A scale-down takes the
    highest recommendation of the last `stabilisation_s` of cluster time (Kubernetes' default
    window). The HPA places nothing, so a broken hop is first repaired as the rulebook does (an
    operator's initial deployment). Each step performs the largest scale-up that fits its
    cluster, else the largest scale-down; a scale-up deploys through a proxy already routed to
    the instance, so routing stays as it was.
    """

    def init(params: EnvParams) -> HPAState:
        lay = params.layout
        window = max(1, math.ceil(stabilisation_s / float(params.step_seconds)))
        shape = (window, lay.clusters, lay.functions, lay.configs)
        return HPAState(history=jnp.zeros(shape, jnp.int32), cursor=jnp.zeros((), jnp.int32))

    def act(key, pstate: HPAState, obs: Observation, params: EnvParams):
        lay = params.layout
        c_n = lay.configs
        desired = hpa_desired(obs.replicas, obs.instance_util, target_utilisation, tolerance)
        history = pstate.history.at[pstate.cursor % pstate.history.shape[0]].set(desired)
        stabilised = jnp.where(desired < obs.replicas, history.max(axis=0), desired)
        change = jnp.where(params.in_chain[None, :, None], stabilised - obs.replicas, 0)
        instance = jnp.arange(lay.clusters)[:, None] * c_n + jnp.arange(c_n)[None, :]
        routed = obs.routes[:, None, :, None] == instance[None, :, None, :]  # [P, K, F, C]
        room = (obs.pods < params.max_pods)[:, None, None]
        up = jnp.where(room & routed.any(axis=0), change, 0).reshape(-1)
        flat_up, flat_down = jnp.argmax(up), jnp.argmin(change.reshape(-1))
        k_u, r_u = flat_up // (lay.functions * c_n), flat_up % (lay.functions * c_n)
        f_u, c_u = r_u // c_n, r_u % c_n
        deploy = lay.encode(k_u, OP_DEPLOY, c_u, f_u, jnp.argmax(routed[:, k_u, f_u, c_u]))
        k_d, r_d = flat_down // (lay.functions * c_n), flat_down % (lay.functions * c_n)
        remove = lay.encode(k_d, OP_REMOVE, r_d % c_n, r_d // c_n, 0)
        noop = jnp.int32(lay.noop_index)
        action = jnp.where(change.reshape(-1)[flat_down] < 0, remove, noop)
        action = jnp.where(up[flat_up] > 0, deploy, action)
        broken = (obs.routes[:, jnp.asarray(params.chain)] < 0).any()
        action = jnp.where(broken, recommend(obs, params), action)
        action = jnp.where(obs.action_mask[jnp.maximum(action, 0)], action, noop)
        return action.astype(jnp.int32), HPAState(history=history, cursor=pstate.cursor + 1)

    return Policy(init=init, act=act)


BASELINES: dict[str, Callable[[], Policy]] = {
    "random": random_policy,
    "static": static_policy,
    "heuristic": heuristic_policy,
    "hpa": hpa_policy,
}
