"""The placement and how it changes: where pods run, where proxies route, how an action or an
autoscaler changes them, and the load that lands on each instance. Shared by the simulator,
the Kubernetes backend (its mirror of the clusters) and the controller."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hmk8s.domain.observation import Measurement
from hmk8s.domain.params import EnvParams
from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE, action_mask
from hmk8s.domain.state import EnvState


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


def instance_load(routes: jax.Array, rates: jax.Array, params: EnvParams) -> jax.Array:
    """Requests/s arriving at each instance: the sum of the proxy rates routed to it, [K, F, C]."""
    k, c = params.layout.clusters, params.layout.configs
    per_hop = jax.nn.one_hot(routes, k * c) * rates[:, None, None]
    load_fi = per_hop.sum(axis=0)
    return jnp.transpose(load_fi.reshape(-1, k, c), (1, 0, 2))


def instance_pressure(
    routes: jax.Array, rates: jax.Array, replicas: jax.Array, params: EnvParams
) -> jax.Array:
    """Rate routed to each instance over the service rate of all its pods, starting ones
    included (0 without pods), [K, F, C]: the utilisation the placement is heading for."""
    load = instance_load(routes, rates, params)
    capacity = replicas * params.mu[None]
    return jnp.where(capacity > 0, load / jnp.maximum(capacity, 1e-9), 0.0)


def _random_instance(key: jax.Array, candidates: jax.Array, count: int) -> jax.Array:
    """For each of `count` draws, a uniformly random True index of `candidates`, or -1 if none."""
    scores = jax.random.uniform(key, (count, candidates.shape[0]))
    pick = jnp.argmax(jnp.where(candidates[None], scores, -1.0), axis=1)
    return jnp.where(candidates.any(), pick, -1).astype(jnp.int32)


def apply_action(
    key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
) -> tuple[EnvState, jax.Array]:
    """Change the placement as the action says; an action that cannot succeed changes nothing.

    Returns the new state and whether the action was invalid (masked, or outside the space,
    such as the -1 a policy returns for "nothing to do" in a layout without a no-op).
    """
    layout = params.layout
    a = layout.decode(action)
    k, f, c, p = a.cluster, a.function, a.config, a.proxy
    in_space = (action >= 0) & (action < layout.num_actions)
    mask = action_mask(layout, state.replicas, params.max_pods, params.in_chain)
    valid = in_space & mask[jnp.clip(action, 0, layout.num_actions - 1)]
    act = valid & ~a.noop
    deploy, remove, assign = (
        act & (a.op == OP_DEPLOY),
        act & (a.op == OP_REMOVE),
        act & (a.op == OP_ASSIGN),
    )
    inst = (k * layout.configs + c).astype(jnp.int32)

    slot = params.startup_steps[f, c] - 1
    pending_col = state.pending[k, f, c]
    depth = params.pending_depth
    last_pending = depth - 1 - jnp.argmax(pending_col[::-1] > 0)
    take_pending = remove & (pending_col.sum() > 0)
    take_ready = remove & ~take_pending
    pending_col = pending_col.at[jnp.maximum(slot, 0)].add(jnp.where(deploy & (slot >= 0), 1, 0))
    pending_col = pending_col.at[last_pending].add(jnp.where(take_pending, -1, 0))
    ready_kfc = state.ready[k, f, c] + jnp.where(deploy & (slot < 0), 1, 0) - take_ready
    ready = state.ready.at[k, f, c].set(ready_kfc)
    pending = state.pending.at[k, f, c].set(pending_col)

    gone = remove & (ready_kfc + pending_col.sum() == 0)
    remaining = (ready + pending.sum(axis=-1))[:, f, :].reshape(-1) > 0
    reroute = _random_instance(key, remaining, layout.proxies)
    hop = state.routes[:, f]
    hop = jnp.where(gone & (hop == inst), reroute, hop)
    hop = hop.at[p].set(jnp.where(deploy | assign, inst, hop[p]))
    routes = state.routes.at[:, f].set(hop)
    backlog = state.backlog.at[k, f, c].set(jnp.where(gone, 0.0, state.backlog[k, f, c]))
    new_state = state.replace(ready=ready, pending=pending, routes=routes, backlog=backlog)
    return new_state, ~valid


def scale_instances(state: EnvState, target: jax.Array, params: EnvParams) -> EnvState:
    """Set every existing instance to ``target`` replicas [K, F, C] at once, as an autoscaler
    scales Deployments: never below one pod (an instance is never removed, so routing stays),
    never creating an instance, and new pods only where their cluster has room (in (f, c)
    order). A scale-down takes starting pods first, the latest first, then ready ones; a
    scale-up starts pods that are ready after their config's start-up delay."""
    replicas = state.replicas
    exists = replicas > 0
    target = jnp.where(exists, jnp.maximum(target, 1), 0)
    down = jnp.maximum(replicas - target, 0)
    pending = state.pending
    later = jnp.flip(jnp.cumsum(jnp.flip(pending, -1), -1), -1) - pending  # pods behind slot d
    pending = pending - jnp.clip(down[..., None] - later, 0, pending)
    ready = state.ready - jnp.maximum(down - state.pending.sum(axis=-1), 0)
    kept = ready + pending.sum(axis=-1)
    room = params.max_pods - kept.sum(axis=(1, 2))
    want = jnp.maximum(target - kept, 0).reshape(room.shape[0], -1)
    before = jnp.cumsum(want, axis=1) - want
    grant = jnp.clip(room[:, None] - before, 0, want).reshape(target.shape)
    slot = params.startup_steps[None] - 1  # [1, F, C]
    start = jax.nn.one_hot(jnp.maximum(slot, 0), params.pending_depth, dtype=jnp.int32)
    pending = pending + jnp.where(slot[..., None] >= 0, grant[..., None] * start, 0)
    ready = ready + jnp.where(slot < 0, grant, 0)
    return state.replace(ready=ready, pending=pending)


def start_state(key: jax.Array, params: EnvParams) -> EnvState:
    """The state an episode starts from, before anything is measured: the start placement,
    empty queues, no burst, a random offset into a replayed trace and a zero measurement.

    ``key`` is the episode's reset key; its third split is left to whoever measures the start
    (the simulator's first measurement, or the clusters' real readings)."""
    k_place, k_offset, _ = jax.random.split(key, 3)
    lay = params.layout
    ready, routes = initial_placement(k_place, params)
    shape = (lay.clusters, lay.functions, lay.configs)
    return EnvState(
        ready=ready,
        pending=jnp.zeros((*shape, params.pending_depth), jnp.int32),
        routes=routes,
        backlog=jnp.zeros(shape, jnp.float32),
        burst_left=jnp.zeros((lay.proxies,), jnp.int32),
        burst_level=jnp.ones((lay.proxies,), jnp.float32),
        trace_offset=jax.random.randint(k_offset, (), 0, params.trace.shape[0]),
        time=jnp.zeros((), jnp.int32),
        measurement=Measurement(
            rates=jnp.zeros((lay.proxies,), jnp.float32),
            instance_util=jnp.zeros(shape, jnp.float32),
            cluster_cpu=jnp.zeros((lay.clusters,), jnp.float32),
            latency_s=jnp.zeros((lay.proxies,), jnp.float32),
        ),
    )
