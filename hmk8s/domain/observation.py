"""What an agent sees, built the same way by the simulator and by the Kubernetes backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from hmk8s.domain.spaces import ActionLayout, action_mask


@struct.dataclass
class Measurement:
    """What the clusters report for one step (noisy, as measured).

    rates: requests/s entering each proxy, f32[P]
    instance_util: CPU usage / CPU request of each instance's ready pods, f32[K, F, C]
    cluster_cpu: CPU usage / CPU request of all ready pods on each cluster, f32[K]
    latency_s: end-to-end latency through each proxy's chain (timeout when broken), f32[P]
    """

    rates: jax.Array
    instance_util: jax.Array
    cluster_cpu: jax.Array
    latency_s: jax.Array


@struct.dataclass
class Observation:
    """The structured observation; encoders turn it into network input.

    routes[p, f] is the instance ``cluster * C + config`` that proxy p sends hop f to, or -1
    (broken hop, or f not in the chain).
    """

    cpu_util: jax.Array
    pods: jax.Array
    replicas: jax.Array
    ready: jax.Array
    instance_util: jax.Array
    routes: jax.Array
    latency_ratio: jax.Array
    rates: jax.Array
    action_mask: jax.Array


def build_observation(
    layout: ActionLayout,
    *,
    ready: jax.Array,
    replicas: jax.Array,
    routes: jax.Array,
    measurement: Measurement,
    sla_s: jax.Array,
    max_pods: int | jax.Array,
    in_chain: jax.Array,
) -> Observation:
    """Assemble the observation from the placement (replicas, routes) and one measurement."""
    return Observation(
        cpu_util=measurement.cluster_cpu,
        pods=replicas.sum(axis=(1, 2)),
        replicas=replicas,
        ready=ready,
        instance_util=measurement.instance_util,
        routes=routes,
        latency_ratio=measurement.latency_s / sla_s,
        rates=measurement.rates,
        action_mask=action_mask(layout, replicas, max_pods, in_chain),
    )


def chain_latency_ratio(obs: Observation) -> jax.Array:
    """The request-weighted latency / SLA ratio over proxies (L in the reward)."""
    weights = obs.rates / jnp.maximum(obs.rates.sum(), 1e-9)
    uniform = jnp.full_like(obs.rates, 1.0 / obs.rates.shape[0])
    weights = jnp.where(obs.rates.sum() > 0, weights, uniform)
    return jnp.sum(weights * obs.latency_ratio)
