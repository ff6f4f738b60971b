"""The env's parameters: a use case and the env settings as arrays (`hmk8s.domain.settings`
builds them)."""

from __future__ import annotations

import jax
from flax import struct

from hmk8s.domain.spaces import ActionLayout

#: Utilisation above which the stationary queueing term stops growing; past it the fluid
#: backlog carries the overload instead of an unbounded M/M/1 wait.
RHO_MAX = 0.95


@struct.dataclass
class EnvParams:
    """Everything `reset`/`step` read; static fields fix shapes and branches under `jit`.

    The last fields shift the load and the clusters away from the use case (neutral by default):
    every rate times ``load_scale * (1 + ramp * t / episode_steps)``, and ``flash_factor`` during
    the ``flash_steps`` steps from ``flash_start``; from step ``capacity_loss_step`` on, cluster
    k's pods serve ``1 - capacity_loss[k]`` of their rate."""

    layout: ActionLayout = struct.field(pytree_node=False)
    chain: tuple[int, ...] = struct.field(pytree_node=False)
    start: str = struct.field(pytree_node=False)
    episode_steps: int = struct.field(pytree_node=False)
    max_pods: int = struct.field(pytree_node=False)
    pending_depth: int = struct.field(pytree_node=False)
    default_config: int = struct.field(pytree_node=False)
    has_trace: bool = struct.field(pytree_node=False)
    mu: jax.Array
    service_rate: jax.Array  # 1 / a request's service time on an idle pod (mu unless calibrated)
    wait_factor: jax.Array  # (1 + cv^2) / 2 of the service time: the M/G/1 wait over M/M/1's
    cpu_request: jax.Array
    cpu_limit: jax.Array
    startup_steps: jax.Array
    in_chain: jax.Array
    home: jax.Array
    delay_s: jax.Array
    base_rate: jax.Array
    diurnal_amplitude: jax.Array
    diurnal_period_s: jax.Array
    phase: jax.Array
    burst_prob: jax.Array
    burst_steps: jax.Array
    burst_factor: jax.Array
    burst_tail: jax.Array
    rate_noise: jax.Array
    trace: jax.Array
    step_seconds: jax.Array
    sla_s: jax.Array
    timeout_s: jax.Array
    measurement_noise: jax.Array
    alpha: jax.Array
    beta: jax.Array
    load_scale: jax.Array
    ramp: jax.Array
    flash_start: jax.Array
    flash_steps: jax.Array
    flash_factor: jax.Array
    capacity_loss: jax.Array
    capacity_loss_step: jax.Array

    @property
    def num_clusters(self) -> int:
        return self.layout.clusters

    @property
    def num_proxies(self) -> int:
        return self.layout.proxies

    @property
    def pods_max(self) -> int:
        return self.layout.clusters * self.max_pods
