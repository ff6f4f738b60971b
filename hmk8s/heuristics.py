"""The operator's rulebook as a heuristic H(s, .) for HAQL.

The rules, first match wins (thresholds in `Rulebook`, documented in docs/environment.md):
1. repair: a proxy (the busiest first) has a broken hop -> assign it to the existing instance
   of that function nearest the proxy's home, or deploy one (default config) on the home
   cluster, or the nearest cluster with room;
2. scale out: the worst proxy's latency is over the SLA -> its most loaded hop gets one more
   replica of the same config on the emptiest nearby cluster, unless that hop is still
   starting pods (then wait: no-op);
3. go home: a proxy's hop runs on another cluster while an instance of that function is
   ready on the proxy's home cluster -> assign it there;
4. scale in: every proxy is well under the SLA -> remove one replica of the least busy
   multi-pod instance if the rest would stay under `scale_in_busy`, or an idle instance of a
   function that has another instance;
5. otherwise no-op.
H(s, a) = eta for the recommended action, 0 elsewhere. Pure JAX; `vmap` it for batches.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hmk8s.observation import Observation
from hmk8s.sim.params import EnvParams
from hmk8s.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE


class Rulebook(NamedTuple):
    """Thresholds of the rules; busy = CPU usage / CPU limit of a ready pod, in [0, 1]."""

    scale_in_latency: float = 0.6
    scale_in_busy: float = 0.6
    idle_busy: float = 0.05


DEFAULT_RULES = Rulebook()


def _nearest_with(candidates: jax.Array, home: jax.Array, params: EnvParams, pods: jax.Array):
    """The candidate cluster nearest `home` (ties: fewest pods); -1 if none."""
    delay = params.delay_s[home] / jnp.maximum(params.delay_s.max(), 1e-9)
    score = jnp.where(candidates, delay + 1e-3 * pods / params.max_pods, jnp.inf)
    return jnp.where(candidates.any(), jnp.argmin(score), -1)


def recommend(obs: Observation, params: EnvParams, rules: Rulebook = DEFAULT_RULES) -> jax.Array:
    """The rulebook's action for one observation (the no-op, or -1 without one, if none)."""
    lay = params.layout
    c_n = lay.configs
    chain = jnp.asarray(params.chain)
    noop = jnp.int32(lay.noop_index)
    pods, replicas, ready = obs.pods, obs.replicas, obs.ready
    room = pods < params.max_pods
    busy = obs.instance_util * params.cpu_request[None] / params.cpu_limit[None]
    hops = obs.routes[:, chain]
    encode = lay.encode

    # 1. repair the busiest proxy's first broken hop
    broken = hops < 0
    proxy_broken = broken.any(axis=1)
    p1 = jnp.argmax(jnp.where(proxy_broken, obs.rates + 1.0, -1.0))
    f1 = chain[jnp.argmax(broken[p1])]
    home1 = params.home[p1]
    exists_k = replicas[:, f1, :].sum(axis=1) > 0
    k_exist = _nearest_with(exists_k, home1, params, pods)
    c_exist = jnp.argmax(replicas[jnp.maximum(k_exist, 0), f1, :])
    k_new = _nearest_with(room, home1, params, pods)
    repair = jnp.where(
        k_exist >= 0,
        encode(k_exist, OP_ASSIGN, c_exist, f1, p1),
        jnp.where(k_new >= 0, encode(k_new, OP_DEPLOY, params.default_config, f1, p1), noop),
    )

    # 2. scale out the worst proxy's most loaded hop
    p2 = jnp.argmax(obs.latency_ratio)
    inst2 = jnp.maximum(hops[p2], 0)
    k_hop, c_hop = inst2 // c_n, inst2 % c_n
    hop_busy = busy[k_hop, chain, c_hop]
    j2 = jnp.argmax(hop_busy)
    f2, kf2, c2 = chain[j2], k_hop[j2], c_hop[j2]
    starting = replicas[kf2, f2, c2] > ready[kf2, f2, c2]
    home2 = params.home[p2]
    emptiness = pods / params.max_pods + params.delay_s[home2] / jnp.maximum(
        params.delay_s.max(), 1e-9
    )
    k2 = jnp.argmin(jnp.where(room, emptiness, jnp.inf))
    scale_out = jnp.where(starting | ~room.any(), noop, encode(k2, OP_DEPLOY, c2, f2, p2))
    breach = obs.latency_ratio[p2] > 1.0

    # 3. route hops to a ready instance on the proxy's home cluster
    home_ready = ready[params.home][:, chain, :] > 0
    away = (hops // c_n != params.home[:, None]) & (hops >= 0)
    movable = away & home_ready.any(axis=2)
    flat = jnp.argmax(movable.reshape(-1))
    p3, j3 = flat // len(params.chain), flat % len(params.chain)
    c3 = jnp.argmax(ready[params.home[p3], chain[j3], :])
    go_home = encode(params.home[p3], OP_ASSIGN, c3, chain[j3], p3)

    # 4. scale in the least busy instance when every proxy is comfortable
    chain_mask = params.in_chain[None, :, None]
    fn_instances = (replicas > 0).sum(axis=(0, 2))
    shrink_busy = busy * ready / jnp.maximum(ready - 1, 1)
    shrinkable = (ready > 1) & (replicas == ready) & (shrink_busy < rules.scale_in_busy)
    idle = (replicas > 0) & (busy < rules.idle_busy) & (fn_instances[None, :, None] > 1)
    candidate = (shrinkable | idle) & chain_mask
    flat4 = jnp.argmin(jnp.where(candidate, busy, jnp.inf).reshape(-1))
    k4, rest = flat4 // (lay.functions * c_n), flat4 % (lay.functions * c_n)
    f4, c4 = rest // c_n, rest % c_n
    comfortable = jnp.all(obs.latency_ratio < rules.scale_in_latency)
    scale_in = encode(k4, OP_REMOVE, c4, f4, 0)

    action = noop
    action = jnp.where(comfortable & candidate.any(), scale_in, action)
    action = jnp.where(movable.any(), go_home, action)
    action = jnp.where(breach, scale_out, action)
    action = jnp.where(proxy_broken.any(), repair, action)
    valid = obs.action_mask[jnp.maximum(action, 0)] & (action >= 0)
    return jnp.where(valid, action, noop).astype(jnp.int32)


def heuristic_values(
    obs: Observation, params: EnvParams, eta: float, rules: Rulebook = DEFAULT_RULES
) -> jax.Array:
    """H(s, .): `eta` at the recommended action, 0 elsewhere."""
    action = recommend(obs, params, rules)
    return eta * jax.nn.one_hot(action, params.layout.num_actions)
