"""The operator's rulebook as a heuristic H(s, .) for HAQL.

The rulebook plans capacity from the request rates it observes: an instance's *pressure* is
the rate routed to it over the service rate of all its pods, starting ones included
(`load / (replicas * mu)`), so a pod that is on its way already counts and the rules neither
wait for latency to rise nor keep adding pods while earlier ones start.

The rules, first match wins (thresholds in `Rulebook`, documented in docs/environment.md):
1. repair: a proxy (the busiest first) has a broken hop -> assign it to the existing
   instance of that function nearest the proxy's home that can take its rate under
   `target_pressure`; else deploy a pod (default config) on the home cluster, or the nearest
   cluster with room; else assign it to the nearest instance at all;
2. scale out: an instance's pressure is over `target_pressure`, or the worst proxy's latency
   is over the SLA and its most pressed hop is not starting pods -> one more pod of that
   instance's config on the emptiest cluster near the home of the busiest proxy it serves;
3. go home: a proxy's hop runs on another cluster while an instance of that function is ready
   on the proxy's home cluster and can take the proxy's rate -> assign it there;
4. scale in: an instance no proxy is routed to is removed; when every proxy is under
   `scale_in_latency` of the SLA, one pod of the instance that would be least pressed without
   it is removed, if that pressure stays under `scale_in_pressure`;
5. otherwise no-op.
H(s, a) = eta for the recommended action, 0 elsewhere. Pure JAX; `vmap` it for batches.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hmk8s.domain.observation import Observation
from hmk8s.domain.params import EnvParams
from hmk8s.domain.placement import instance_load, instance_pressure
from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE


class Rulebook(NamedTuple):
    """Thresholds of the rules; pressure = routed rate / (pods * mu), latency as a ratio to SLA."""

    target_pressure: float = 0.6
    scale_in_pressure: float = 0.45
    scale_in_latency: float = 0.6


DEFAULT_RULES = Rulebook()


def _nearest_with(candidates: jax.Array, home: jax.Array, params: EnvParams, pods: jax.Array):
    """The candidate cluster nearest `home` (ties: fewest pods); -1 if none."""
    delay = params.delay_s[home] / jnp.maximum(params.delay_s.max(), 1e-9)
    score = jnp.where(candidates, delay + 1e-3 * pods / params.max_pods, jnp.inf)
    return jnp.where(candidates.any(), jnp.argmin(score), -1)


def _emptiest_near(room: jax.Array, home: jax.Array, params: EnvParams, pods: jax.Array):
    """The cluster with room minimising pods / max_pods + delay(home, k) / max delay."""
    delay = params.delay_s[home] / jnp.maximum(params.delay_s.max(), 1e-9)
    return jnp.argmin(jnp.where(room, pods / params.max_pods + delay, jnp.inf))


def recommend(obs: Observation, params: EnvParams, rules: Rulebook = DEFAULT_RULES) -> jax.Array:
    """The rulebook's action for one observation (the no-op, or -1 without one, if none)."""
    lay = params.layout
    c_n = lay.configs
    chain = jnp.asarray(params.chain)
    noop = jnp.int32(lay.noop_index)
    pods, replicas, ready = obs.pods, obs.replicas, obs.ready
    room = pods < params.max_pods
    load = instance_load(obs.routes, obs.rates, params)
    capacity = replicas * params.mu[None]
    pressure = instance_pressure(obs.routes, obs.rates, replicas, params)
    hops = obs.routes[:, chain]
    safe_hops = jnp.maximum(hops, 0)
    hop_k, hop_c = safe_hops // c_n, safe_hops % c_n
    encode = lay.encode

    # 1. repair the busiest proxy's first broken hop
    broken = hops < 0
    proxy_broken = broken.any(axis=1)
    p1 = jnp.argmax(jnp.where(proxy_broken, obs.rates + 1.0, -1.0))
    f1 = chain[jnp.argmax(broken[p1])]
    home1 = params.home[p1]
    fits = load[:, f1, :] + obs.rates[p1] <= rules.target_pressure * capacity[:, f1, :]
    exists = replicas[:, f1, :] > 0
    k_fit = _nearest_with((exists & fits).any(axis=1), home1, params, pods)
    c_fit = jnp.argmax(exists[jnp.maximum(k_fit, 0)] & fits[jnp.maximum(k_fit, 0)])
    k_new = _nearest_with(room, home1, params, pods)
    k_any = _nearest_with(exists.any(axis=1), home1, params, pods)
    c_any = jnp.argmax(replicas[jnp.maximum(k_any, 0), f1, :])
    repair = jnp.where(
        k_fit >= 0,
        encode(k_fit, OP_ASSIGN, c_fit, f1, p1),
        jnp.where(
            k_new >= 0,
            encode(k_new, OP_DEPLOY, params.default_config, f1, p1),
            jnp.where(k_any >= 0, encode(k_any, OP_ASSIGN, c_any, f1, p1), noop),
        ),
    )

    # 2. scale out the most pressed instance, or the worst proxy's most pressed hop
    routed = jax.nn.one_hot(obs.routes, lay.clusters * c_n, dtype=bool)  # [P, F, K*C]
    served = jnp.transpose(routed.reshape(-1, lay.functions, lay.clusters, c_n), (0, 2, 1, 3))
    flat2 = jnp.argmax(pressure.reshape(-1))
    k_o, rest_o = flat2 // (lay.functions * c_n), flat2 % (lay.functions * c_n)
    f_o, c_o = rest_o // c_n, rest_o % c_n
    overloaded = pressure[k_o, f_o, c_o] > rules.target_pressure
    p_w = jnp.argmax(obs.latency_ratio)
    hop_pressure = pressure[hop_k[p_w], chain, hop_c[p_w]]
    j_w = jnp.argmax(hop_pressure)
    k_w, f_w, c_w = hop_k[p_w, j_w], chain[j_w], hop_c[p_w, j_w]
    starting = replicas[k_w, f_w, c_w] > ready[k_w, f_w, c_w]
    breach = (obs.latency_ratio[p_w] > 1.0) & ~starting
    k2 = jnp.where(overloaded, k_o, k_w)
    f2 = jnp.where(overloaded, f_o, f_w)
    c2 = jnp.where(overloaded, c_o, c_w)
    p2 = jnp.argmax(jnp.where(served[:, k2, f2, c2], obs.rates, -1.0))
    k_out = _emptiest_near(room, params.home[p2], params, pods)
    scale_out = jnp.where(room.any(), encode(k_out, OP_DEPLOY, c2, f2, p2), noop)

    # 3. route hops to a ready instance on the proxy's home cluster that can take them
    home_load = load[params.home][:, chain, :]
    home_ready_cap = (ready * params.mu[None])[params.home][:, chain, :]
    takes = (ready[params.home][:, chain, :] > 0) & (
        home_load + obs.rates[:, None, None] <= rules.target_pressure * home_ready_cap
    )
    away = (hop_k != params.home[:, None]) & (hops >= 0)
    movable = away & takes.any(axis=2)
    flat3 = jnp.argmax(movable.reshape(-1))
    p3, j3 = flat3 // len(params.chain), flat3 % len(params.chain)
    c3 = jnp.argmax(takes[p3, j3])
    go_home = encode(params.home[p3], OP_ASSIGN, c3, chain[j3], p3)

    # 4. scale in: an unrouted instance, or the pod whose removal leaves the least pressure
    chain_mask = params.in_chain[None, :, None]
    unrouted = (replicas > 0) & ~served.any(axis=0) & chain_mask
    flat_u = jnp.argmax(unrouted.reshape(-1))
    after = load / jnp.maximum((replicas - 1) * params.mu[None], 1e-9)
    shrinkable = (replicas > 1) & (replicas == ready) & (after < rules.scale_in_pressure)
    flat_s = jnp.argmin(jnp.where(shrinkable & chain_mask, after, jnp.inf).reshape(-1))
    flat4 = jnp.where(unrouted.any(), flat_u, flat_s)
    k4, rest4 = flat4 // (lay.functions * c_n), flat4 % (lay.functions * c_n)
    scale_in = encode(k4, OP_REMOVE, rest4 % c_n, rest4 // c_n, 0)
    comfortable = jnp.all(obs.latency_ratio < rules.scale_in_latency)
    shrink = unrouted.any() | (comfortable & (shrinkable & chain_mask).any())

    action = noop
    action = jnp.where(shrink, scale_in, action)
    action = jnp.where(movable.any(), go_home, action)
    action = jnp.where(overloaded | breach, scale_out, action)
    action = jnp.where(proxy_broken.any(), repair, action)
    valid = obs.action_mask[jnp.maximum(action, 0)] & (action >= 0)
    return jnp.where(valid, action, noop).astype(jnp.int32)


def heuristic_values(
    obs: Observation, params: EnvParams, eta: float, rules: Rulebook = DEFAULT_RULES
) -> jax.Array:
    """H(s, .): `eta` at the recommended action, 0 elsewhere."""
    action = recommend(obs, params, rules)
    return eta * jax.nn.one_hot(action, params.layout.num_actions)
