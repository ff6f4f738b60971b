"""Encoders: the structured observation -> the Q-network's input vector.

`onehot` is the original system's layout (70 inputs for K = F = 3):
CPU utilisation per cluster in 7 bins (0-20, 20-40, 40-60, 60-80, 80-100, 100-150, >150 %);
placement of each function as one of 2^K cluster subsets; pods per cluster in 6 bins
(0, 1-2, 3-4, 5-6, 7-8, 9-10); the request-weighted latency / SLA ratio in the CPU's 7 bins.
`continuous` gives normalised raw values instead, routes included.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from hmk8s.domain.observation import Observation, chain_latency_ratio
from hmk8s.domain.params import EnvParams
from hmk8s.domain.placement import instance_pressure

PERCENT_EDGES = (0.2, 0.4, 0.6, 0.8, 1.0, 1.5)
PERCENT_BINS = len(PERCENT_EDGES) + 1
POD_BINS = 6


def percent_bin(x: jax.Array) -> jax.Array:
    """Bin of a ratio (1.0 = 100 %): [0, .2), [.2, .4), ..., [1, 1.5), [1.5, inf)."""
    return jnp.searchsorted(jnp.asarray(PERCENT_EDGES), x, side="right")


def pod_bin(pods: jax.Array) -> jax.Array:
    """0 -> 0, 1-2 -> 1, 3-4 -> 2, ..., 9 or more -> 5."""
    return jnp.minimum((pods + 1) // 2, POD_BINS - 1)


def placement_code(replicas: jax.Array) -> jax.Array:
    """Per function, the subset of clusters running it as a bitmask: sum_k 2^k [runs on k]."""
    runs = replicas.sum(axis=2) > 0
    weights = 2 ** jnp.arange(replicas.shape[0])
    return (runs * weights[:, None]).sum(axis=0)


def onehot(obs: Observation, params: EnvParams) -> jax.Array:
    k, f = params.layout.clusters, params.layout.functions
    parts = [
        jax.nn.one_hot(percent_bin(obs.cpu_util), PERCENT_BINS).reshape(-1),
        jax.nn.one_hot(placement_code(obs.replicas), 2**k).reshape(-1),
        jax.nn.one_hot(pod_bin(obs.pods), POD_BINS).reshape(-1),
        jax.nn.one_hot(percent_bin(chain_latency_ratio(obs)), PERCENT_BINS),
    ]
    out = jnp.concatenate(parts)
    assert out.shape == (onehot_size(k, f),)
    return out


def onehot_size(clusters: int, functions: int) -> int:
    return PERCENT_BINS * clusters + 2**clusters * functions + POD_BINS * clusters + PERCENT_BINS


def continuous(obs: Observation, params: EnvParams) -> jax.Array:
    """Normalised raw values: CPU and utilisation / 2, pods and replicas / max_pods,
    each proxy's route per chain hop one-hot (last slot = broken), latency ratios twice (over
    the timeout ratio, for the whole range, and / 2, to resolve the SLA), each instance's
    pressure / 2 (the rulebook's planning quantity), and each proxy's share of the load with
    the total load's log."""
    lay = params.layout
    chain = jnp.asarray(params.chain)
    hops = obs.routes[:, chain]
    routes = jax.nn.one_hot(
        jnp.where(hops < 0, lay.clusters * lay.configs, hops), lay.clusters * lay.configs + 1
    )
    total = obs.rates.sum()
    pressure = instance_pressure(obs.routes, obs.rates, obs.replicas, params)
    parts = [
        jnp.clip(obs.cpu_util / 2.0, 0.0, 1.0),
        obs.pods / params.max_pods,
        obs.replicas.reshape(-1) / params.max_pods,
        jnp.clip(obs.instance_util.reshape(-1) / 2.0, 0.0, 1.0),
        routes.reshape(-1),
        jnp.clip(obs.latency_ratio * params.sla_s / params.timeout_s, 0.0, 1.0),
        jnp.clip(obs.latency_ratio / 2.0, 0.0, 1.0),
        jnp.clip(pressure.reshape(-1) / 2.0, 0.0, 1.0),
        obs.rates / jnp.maximum(total, 1e-6),
        jnp.clip(jnp.log1p(total)[None] / 10.0, 0.0, 1.0),
    ]
    return jnp.concatenate(parts).astype(jnp.float32)


ENCODERS: dict[str, Callable[[Observation, EnvParams], jax.Array]] = {
    "onehot": onehot,
    "continuous": continuous,
}


def get_encoder(name: str) -> Callable[[Observation, EnvParams], jax.Array]:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}") from None
