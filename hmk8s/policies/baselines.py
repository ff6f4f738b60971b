"""Baseline policies: random, static (an operator's fixed placement), heuristic, hpa (the HPA rule
through the agent's one action a step) and hpa_exact (the HPA as Kubernetes runs it).

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

from hmk8s.domain.observation import Observation
from hmk8s.domain.params import EnvParams
from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE
from hmk8s.policies.heuristics import recommend


class Policy(NamedTuple):
    """``scales``: ``act`` returns ``((action, replicas), pstate)``, and the rollout sets every
    instance to ``replicas`` [K, F, C] (`scale_instances`) before the env applies ``action``: an
    autoscaler that scales all Deployments each sync, not one change a step. Such a policy runs
    on the JAX env only (`rollout`)."""

    init: Callable[[EnvParams], Any]
    act: Callable[[jax.Array, Any, Observation, EnvParams], tuple[Any, Any]]
    scales: bool = False


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
    """Recent desired-replica recommendations per instance, for the scale-down window, and the
    ready pods each instance kept at the last sync (-1 before the first): a pod ready since then
    has no metrics yet."""

    history: jax.Array
    cursor: jax.Array
    seen_ready: jax.Array


#: the HPA's sync period and the period of its default scale-up and scale-down policies
HPA_PERIOD_S = 15.0


def hpa_desired(
    replicas: jax.Array, utilisation: jax.Array, target: Any, tolerance: Any = 0.1
) -> jax.Array:
    """Kubernetes' HPA rule per instance: ceil(replicas * utilisation / target), unchanged while
    |utilisation / target - 1| <= tolerance, at least 1, and at most the default scale-up
    policy allows per period: max(replicas + 4, 2 * replicas)."""
    ratio = utilisation / target
    desired = jnp.ceil(replicas * ratio).astype(jnp.int32)
    desired = jnp.where(jnp.abs(ratio - 1.0) <= tolerance, replicas, desired)
    desired = jnp.minimum(desired, jnp.maximum(replicas + 4, 2 * replicas))
    return jnp.where(replicas > 0, jnp.maximum(desired, 1), 0)


def _percent(utilisation: jax.Array) -> jax.Array:
    """Utilisation in whole percent, truncated as the controller's integer arithmetic does (the
    1e-4 keeps a float32 0.9 at 90)."""
    return jnp.floor(100.0 * utilisation + 1e-4)


def hpa_recommendation(
    current: jax.Array,
    ready: jax.Array,
    missing: jax.Array,
    utilisation: jax.Array,
    target: Any,
    tolerance: Any = 0.1,
) -> jax.Array:
    """The replica count the HPA's metric calculation recommends per instance, before its
    stabilisation window and scaling policies (Kubernetes' ``GetResourceReplicas``).

    ``current`` pods (ready or starting), ``ready`` of them ready, ``missing`` of those with no
    metrics yet, ``utilisation`` the mean of the others. Usage ratio = utilisation % / target %.
    With no starting pod on a scale-up and none missing: unchanged within the tolerance, else
    ceil(ratio * pods with metrics). Else recompute with missing pods at 0 % on a scale-up and
    at max(100 %, target) on a scale-down, and starting pods at 0 % on a scale-up: unchanged if
    the new ratio is within the tolerance or turns the direction, else ceil(new ratio * pods
    counted), unless that count itself turns the direction. No pod with metrics: unchanged.
    """
    target_pct = jnp.round(100.0 * jnp.asarray(target, jnp.float32))
    measured = ready - missing
    unready = current - ready
    util_pct = _percent(utilisation)
    ratio = util_pct / target_pct
    up_unready = (unready > 0) & (ratio > 1.0)
    simple = ~up_unready & (missing == 0)
    within = jnp.abs(1.0 - ratio) <= tolerance
    simple_desired = jnp.where(within, current, jnp.ceil(ratio * measured).astype(jnp.int32))
    counted_missing = jnp.where(ratio != 1.0, missing, 0)
    fill = jnp.where(ratio < 1.0, jnp.maximum(1.0, target_pct / 100.0), 0.0)
    counted = measured + counted_missing + jnp.where(up_unready, unready, 0)
    total = measured * utilisation + counted_missing * fill
    new_ratio = _percent(total / jnp.maximum(counted, 1)) / target_pct
    new_desired = jnp.ceil(new_ratio * counted).astype(jnp.int32)
    keep = (
        (jnp.abs(1.0 - new_ratio) <= tolerance)
        | ((ratio < 1.0) & (new_ratio > 1.0))
        | ((ratio > 1.0) & (new_ratio < 1.0))
        | ((new_ratio < 1.0) & (new_desired > current))
        | ((new_ratio > 1.0) & (new_desired < current))
    )
    desired = jnp.where(simple, simple_desired, jnp.where(keep, current, new_desired))
    return jnp.where(measured > 0, desired, current)


def hpa_normalise(
    current: jax.Array, desired: jax.Array, window_max: jax.Array, syncs: Any
) -> jax.Array:
    """The HPA's behaviour applied to a recommendation (``normalizeDesiredReplicasWithBehaviors``,
    default behaviour): a scale-down goes no lower than ``window_max``, the highest recommendation
    of the stabilisation window (this one included); a scale-up (no up window) goes at most to
    max(current + 4, 2 * current) per sync, compounded over the ``syncs`` syncs of a step; the
    100 %-per-period scale-down policy allows any drop to the minimum of one replica."""
    stabilised = jnp.where(current < desired, desired, jnp.minimum(current, window_max))
    limit = jax.lax.fori_loop(0, syncs, lambda _, r: jnp.maximum(r + 4, 2 * r), current)
    return jnp.maximum(jnp.minimum(stabilised, limit), 1)


def _window_max(history: jax.Array, cursor: jax.Array, window_steps: jax.Array) -> jax.Array:
    """The highest recommendation of the last ``window_steps`` syncs (``cursor`` the newest)."""
    age = (cursor - jnp.arange(history.shape[0])) % history.shape[0]
    recent = (age < window_steps)[:, None, None, None]
    return jnp.where(recent, history, 0).max(axis=0)


def _hpa_init(longest_window_s: float) -> Callable[[EnvParams], HPAState]:
    """A policy state whose history holds ``longest_window_s`` of recommendations."""

    def init(params: EnvParams) -> HPAState:
        lay = params.layout
        window = max(1, math.ceil(longest_window_s / float(params.step_seconds)))
        shape = (lay.clusters, lay.functions, lay.configs)
        return HPAState(
            history=jnp.zeros((window, *shape), jnp.int32),
            cursor=jnp.zeros((), jnp.int32),
            seen_ready=jnp.full(shape, -1, jnp.int32),
        )

    return init


def _window_steps(window_s: Any, params: EnvParams) -> jax.Array:
    """Recommendations a window of ``window_s`` holds at one per step (the newest included)."""
    return jnp.maximum(1, jnp.ceil(window_s / params.step_seconds - 1e-6)).astype(jnp.int32)


def _repair(action: jax.Array, obs: Observation, params: EnvParams) -> jax.Array:
    """The rulebook's repair while a hop is broken (the HPA places nothing: an operator's
    initial deployment), else ``action``; the no-op if the mask forbids the result."""
    broken = (obs.routes[:, jnp.asarray(params.chain)] < 0).any()
    action = jnp.where(broken, recommend(obs, params), action)
    noop = jnp.int32(params.layout.noop_index)
    return jnp.where(obs.action_mask[jnp.maximum(action, 0)], action, noop).astype(jnp.int32)


def hpa_policy(
    target_utilisation: Any = 0.8,
    stabilisation_s: Any = 300.0,
    tolerance: Any = 0.1,
    longest_window_s: float = 300.0,
) -> Policy:
    """The Horizontal Pod Autoscaler on every instance, one replica per step.

    Utilisation is CPU usage over CPU request, as the HPA reads it. A scale-down takes the
    highest recommendation of the last `stabilisation_s` of cluster time (Kubernetes' default
    window; at most ``longest_window_s``, the history kept). The HPA places nothing, so a broken
    hop is first repaired as the rulebook does (an operator's initial deployment). Each step
    performs the largest scale-up that fits its cluster, else the largest scale-down; a
    scale-up deploys through a proxy already routed to the instance, so routing stays as it was.
    The knobs may be traced arrays (a calibration grid under ``vmap``).
    """

    def act(key, pstate: HPAState, obs: Observation, params: EnvParams):
        lay = params.layout
        c_n = lay.configs
        desired = hpa_desired(obs.replicas, obs.instance_util, target_utilisation, tolerance)
        cursor = pstate.cursor % pstate.history.shape[0]
        history = pstate.history.at[cursor].set(desired)
        window_max = _window_max(history, cursor, _window_steps(stabilisation_s, params))
        stabilised = jnp.where(desired < obs.replicas, window_max, desired)
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
        state = pstate.replace(history=history, cursor=pstate.cursor + 1)
        return _repair(action, obs, params), state

    return Policy(init=_hpa_init(longest_window_s), act=act)


def hpa_exact_policy(
    target_utilisation: Any = 0.8,
    stabilisation_s: Any = 300.0,
    tolerance: Any = 0.1,
    longest_window_s: float = 300.0,
) -> Policy:
    """The Horizontal Pod Autoscaler as Kubernetes runs it, on every in-chain Deployment at once.

    Each step is one sync period per `HPA_PERIOD_S` of cluster time (one for 15 s steps): every
    instance gets `hpa_recommendation` from its pods' utilisation (a pod ready since the last
    sync has no metrics yet, a starting pod is unready), then `hpa_normalise` with the last
    ``stabilisation_s`` of recommendations, and the rollout scales it there
    (`scale_instances`), within its cluster's room. Broken hops are repaired as `hpa_policy`
    does. The knobs may be traced arrays (a calibration grid under ``vmap``).
    """

    def act(key, pstate: HPAState, obs: Observation, params: EnvParams):
        current, ready = obs.replicas, obs.ready
        missing = jnp.where(pstate.seen_ready >= 0, jnp.clip(ready - pstate.seen_ready, 0), 0)
        desired = hpa_recommendation(
            current, ready, missing, obs.instance_util, target_utilisation, tolerance
        )
        cursor = pstate.cursor % pstate.history.shape[0]
        history = pstate.history.at[cursor].set(desired)
        window_max = _window_max(history, cursor, _window_steps(stabilisation_s, params))
        syncs = jnp.maximum(1, jnp.round(params.step_seconds / HPA_PERIOD_S)).astype(jnp.int32)
        scaled = hpa_normalise(current, desired, window_max, syncs)
        replicas = jnp.where(params.in_chain[None, :, None] & (current > 0), scaled, current)
        noop = jnp.int32(params.layout.noop_index)
        state = HPAState(
            history=history, cursor=pstate.cursor + 1, seen_ready=jnp.minimum(ready, replicas)
        )
        return (_repair(noop, obs, params), replicas), state

    return Policy(init=_hpa_init(longest_window_s), act=act, scales=True)


BASELINES: dict[str, Callable[[], Policy]] = {
    "random": random_policy,
    "static": static_policy,
    "heuristic": heuristic_policy,
    "hpa": hpa_policy,
    "hpa_exact": hpa_exact_policy,
}
