"""The simulator's state: the placement, the queues and the load generator."""

from __future__ import annotations

import jax
from flax import struct

from hmk8s.domain.observation import Measurement, Observation, build_observation
from hmk8s.domain.params import EnvParams


@struct.dataclass
class EnvState:
    """One environment's state.

    ready[k, f, c]      pods of instance (k, f, c) serving requests
    pending[k, f, c, d] pods still starting, ready after d + 1 more steps
    routes[p, f]        instance ``k * C + c`` proxy p sends hop f to, or -1
    backlog[k, f, c]    requests queued at the instance (fluid queue)
    burst_left[p]       steps left in proxy p's current burst
    burst_level[p]      rate multiplier of that burst
    trace_offset        where this episode starts in a replayed trace
    time                steps since reset
    measurement         what the last step measured (the observation reads it)
    """

    ready: jax.Array
    pending: jax.Array
    routes: jax.Array
    backlog: jax.Array
    burst_left: jax.Array
    burst_level: jax.Array
    trace_offset: jax.Array
    time: jax.Array
    measurement: Measurement

    @property
    def replicas(self) -> jax.Array:
        """Pods of each instance, ready or starting: what counts against capacity."""
        return self.ready + self.pending.sum(axis=-1)


def observe(state: EnvState, params: EnvParams) -> Observation:
    """What an agent sees of ``state``: the one mapping from state to observation, whichever
    backend measured it."""
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
