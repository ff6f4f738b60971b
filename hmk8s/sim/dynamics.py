"""The clusters' dynamics as pure JAX functions (see docs/environment.md for every formula).

A step is two pure pieces, so the Kubernetes backend and its emulated twin can reuse them:
`apply_action` changes the placement (what the agent controls) and `advance` plays
`step_seconds` of cluster time on it (load, queues, latency, start-ups, measurement noise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hmk8s.domain.observation import Measurement
from hmk8s.domain.params import RHO_MAX, EnvParams
from hmk8s.domain.placement import instance_load
from hmk8s.domain.state import EnvState


def request_rates(
    key: jax.Array, state: EnvState, params: EnvParams
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Requests/s entering each proxy this step, and the burst state carried to the next.

    rate = base * (1 + A sin(2 pi t / period + phase)) * burst * lognormal noise (mean one);
    a burst starts with probability `burst_prob` when none runs, lasts `burst_steps` steps and
    multiplies the rate by `burst_factor` (or, with a Pareto tail b > 1, by a heavy-tailed
    factor of the same mean, capped at ten times its excess). A replayed trace replaces the
    diurnal wave and the bursts; the noise still applies.
    """
    k_start, k_size, k_noise = jax.random.split(key, 3)
    num_proxies = params.base_rate.shape[0]
    t_s = state.time.astype(jnp.float32) * params.step_seconds
    wave = 1.0 + params.diurnal_amplitude * jnp.sin(
        2.0 * jnp.pi * t_s / params.diurnal_period_s + params.phase
    )
    starts = (state.burst_left == 0) & (
        jax.random.uniform(k_start, (num_proxies,)) < params.burst_prob
    )
    tail = jnp.maximum(params.burst_tail, 1.0 + 1e-3)
    pareto = jax.random.pareto(k_size, tail) * (tail - 1.0) / tail
    excess = (params.burst_factor - 1.0) * jnp.where(
        params.burst_tail > 0, jnp.minimum(pareto, 10.0), 1.0
    )
    level = jnp.where(starts, 1.0 + excess, state.burst_level)
    left = jnp.where(starts, params.burst_steps, state.burst_left)
    burst = jnp.where(left > 0, level, 1.0)
    sigma = params.rate_noise
    noise = jnp.exp(sigma * jax.random.normal(k_noise, (num_proxies,)) - 0.5 * sigma**2)
    if params.has_trace:
        row = (state.trace_offset + state.time) % params.trace.shape[0]
        rates = params.trace[row] * noise
    else:
        rates = params.base_rate * jnp.maximum(wave, 0.0) * burst * noise
    return rates * load_shift(state.time, params), jnp.maximum(left - 1, 0), level


def load_shift(time: jax.Array, params: EnvParams) -> jax.Array:
    """The scenario's multiplier of every rate at step ``time`` (one for the use case's own
    load): ``load_scale * (1 + ramp * time / episode_steps)``, times ``flash_factor`` in the
    flash crowd."""
    flash = (time >= params.flash_start) & (time < params.flash_start + params.flash_steps)
    ramp = 1.0 + params.ramp * time.astype(jnp.float32) / params.episode_steps
    return params.load_scale * ramp * jnp.where(flash, params.flash_factor, 1.0)


def cluster_speed(time: jax.Array, params: EnvParams) -> jax.Array:
    """The fraction of its service rate each cluster's pods give at step ``time``, [K]: one, less
    ``capacity_loss`` from ``capacity_loss_step`` on (half its nodes gone: its pods share half the
    CPU)."""
    return 1.0 - jnp.where(time >= params.capacity_loss_step, params.capacity_loss, 0.0)


def serve(
    load: jax.Array,
    ready: jax.Array,
    backlog: jax.Array,
    params: EnvParams,
    speed: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step of every instance's fluid queue: (backlog after, busy fraction, hop latency).

    mu = the config's rate * its cluster's ``speed`` (one without it); capacity = ready * mu;
    backlog' = max(0, backlog + (load - capacity) * dt) while the
    instance has ready pods (with none, requests fail instead of queueing, and it is 0);
    hop latency = s (service) + w * rho_c / (1 - rho_c) * s (stationary M/G/1 wait, by
    Pollaczek-Khinchine, w = (1 + cv^2) / 2 of the service time's squared coefficient of
    variation: 1 for M/M/1, the default; rho_c = min(load / capacity, RHO_MAX))
    + backlog' / capacity (drain time of the backlog), with s = 1 / mu unless the use case
    gives a calibrated service time, or the timeout when no pod is ready.
    """
    mu = params.mu[None] if speed is None else params.mu[None] * speed[:, None, None]
    capacity = ready * mu
    serving = capacity > 0
    safe_cap = jnp.where(serving, capacity, 1.0)
    backlog_next = jnp.where(
        serving, jnp.maximum(0.0, backlog + (load - capacity) * params.step_seconds), 0.0
    )
    rho = load / safe_cap
    busy = jnp.where(serving, jnp.where(backlog_next > 0, 1.0, jnp.minimum(rho, 1.0)), 0.0)
    rho_c = jnp.minimum(rho, RHO_MAX)
    rate = params.service_rate[None]
    rate = rate if speed is None else rate * speed[:, None, None]
    wait = params.wait_factor[None] * rho_c / (1.0 - rho_c) / rate
    latency = 1.0 / rate + wait + backlog_next / safe_cap
    return backlog_next, busy, jnp.where(serving, latency, params.timeout_s)


def chain_latency(routes: jax.Array, hop_latency: jax.Array, params: EnvParams) -> jax.Array:
    """End-to-end latency per proxy: hops plus network delay home -> hop 1 -> ... -> home.

    A broken hop (route -1) makes the chain time out; so does any latency over the timeout.
    """
    c = params.layout.configs
    chain = jnp.asarray(params.chain)
    inst = routes[:, chain]
    broken = jnp.any(inst < 0, axis=1)
    safe = jnp.maximum(inst, 0)
    clusters, configs = safe // c, safe % c
    hops = hop_latency[clusters, chain[None, :], configs].sum(axis=1)
    path = jnp.concatenate([params.home[:, None], clusters, params.home[:, None]], axis=1)
    network = params.delay_s[path[:, :-1], path[:, 1:]].sum(axis=1)
    total = jnp.minimum(network + hops, params.timeout_s)
    return jnp.where(broken, params.timeout_s, total)


def cluster_utilisation(instance_util: jax.Array, ready: jax.Array, params: EnvParams) -> jax.Array:
    """Each cluster's CPU usage over the requests of its ready pods [K]: what summing its pods'
    metrics gives, so a noisy per-instance reading yields the cluster reading a cluster would."""
    request = ready * params.cpu_request[None]
    used, asked = (instance_util * request).sum(axis=(1, 2)), request.sum(axis=(1, 2))
    return jnp.where(asked > 0, used / jnp.where(asked > 0, asked, 1.0), 0.0)


def cpu_utilisation(
    ready: jax.Array, busy: jax.Array, params: EnvParams
) -> tuple[jax.Array, jax.Array]:
    """CPU usage over CPU request, per instance [K, F, C] and per cluster [K], as HPA reads it.

    A busy pod uses `cpu_limit` cores, so utilisation can exceed 100 % (up to limit/request).
    """
    inst = jnp.where(ready > 0, busy * params.cpu_limit[None] / params.cpu_request[None], 0.0)
    return inst, cluster_utilisation(inst, ready, params)


def measure(
    key: jax.Array, state: EnvState, params: EnvParams
) -> tuple[Measurement, jax.Array, jax.Array, jax.Array]:
    """Play one step of load on the current placement: (measurement, backlog', burst state)."""
    k_rates, k_noise = jax.random.split(key)
    rates, burst_left, burst_level = request_rates(k_rates, state, params)
    load = instance_load(state.routes, rates, params)
    speed = cluster_speed(state.time, params)
    backlog, busy, hop_latency = serve(load, state.ready, state.backlog, params, speed)
    latency = chain_latency(state.routes, hop_latency, params)
    inst_util, _ = cpu_utilisation(state.ready, busy, params)
    k_inst, k_lat = jax.random.split(k_noise)
    sigma = params.measurement_noise

    def noisy(k: jax.Array, x: jax.Array) -> jax.Array:
        return x * jnp.exp(sigma * jax.random.normal(k, x.shape))

    measured_util = noisy(k_inst, inst_util)
    measurement = Measurement(
        rates=rates,
        instance_util=measured_util,
        cluster_cpu=cluster_utilisation(measured_util, state.ready, params),
        latency_s=jnp.where(
            latency >= params.timeout_s,
            params.timeout_s,
            jnp.minimum(noisy(k_lat, latency), params.timeout_s),
        ),
    )
    return measurement, backlog, burst_left, burst_level


def advance(key: jax.Array, state: EnvState, params: EnvParams) -> EnvState:
    """Play `step_seconds` of cluster time: serve the load, then promote started pods."""
    measurement, backlog, burst_left, burst_level = measure(key, state, params)
    return state.replace(
        ready=state.ready + state.pending[..., 0],
        pending=jnp.concatenate(
            [state.pending[..., 1:], jnp.zeros_like(state.pending[..., :1])], axis=-1
        ),
        backlog=backlog,
        burst_left=burst_left,
        burst_level=burst_level,
        time=state.time + 1,
        measurement=measurement,
    )
