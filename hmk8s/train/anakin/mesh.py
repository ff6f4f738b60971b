"""Data parallelism for the Anakin loop: one agent over the ``data`` axis of a device mesh.

Each device steps its share of the envs, keeps its own replay shard and its own keys, and
computes gradients on its own batch; the update averages them over the axis
(`jax.lax.pmean`), so the learner stays replicated. In the global train state the per-device
fields (`DEVICE_FIELDS`) carry a leading device axis sharded over ``data``; the learner and
the env step count keep their single-device shapes and are replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hmk8s.train.state import TrainState

DATA_AXIS = "data"
DEVICE_FIELDS = ("buffer", "env_state", "obs", "mask", "hint", "episode_return", "rng")
# An env may return values the same on every device (a constant mask, a hint of -1), so the
# per-device carry cannot be type-checked as varying; the learner is replicated by the
# gradient average, which the tests check on the devices' buffers.
CHECK_VMA = False


def data_mesh(devices: int) -> Mesh:
    """A one-axis mesh over the first ``devices`` of `jax.devices()` (every process's)."""
    available = jax.devices()
    if not 1 <= devices <= len(available):
        raise ValueError(f"devices={devices}: this run sees {len(available)} devices")
    return Mesh(np.array(available[:devices]), (DATA_AXIS,))


def state_specs() -> TrainState:
    """Partition of the global train state: per-device fields split on their leading axis."""
    return TrainState(
        **{f: P(DATA_AXIS) if f in DEVICE_FIELDS else P() for f in TrainState._fields}
    )


def state_shardings(mesh: Mesh) -> TrainState:
    """`state_specs` as shardings on ``mesh`` (to place or restore a state)."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        state_specs(),
        is_leaf=lambda x: isinstance(x, P),
    )


def _map_device_fields(state: TrainState, fn: Callable[[jax.Array], jax.Array]) -> TrainState:
    return state._replace(**{f: jax.tree.map(fn, getattr(state, f)) for f in DEVICE_FIELDS})


def local_view(state: TrainState) -> TrainState:
    """Inside `jax.shard_map`: drop the (size-1) device axis of this device's fields."""
    return _map_device_fields(state, lambda x: x[0])


def global_view(state: TrainState) -> TrainState:
    """Inside `jax.shard_map`: give this device's fields back their device axis."""
    return _map_device_fields(state, lambda x: x[None])


def init_over_mesh(init: Callable[[jax.Array], TrainState], mesh: Mesh) -> Callable:
    """``keys -> global state``: ``init`` (seed-batched) run on every device from the same keys;
    it must draw its per-device keys from `jax.lax.axis_index` of `DATA_AXIS`."""
    body = jax.shard_map(
        lambda keys: global_view(init(keys)),
        mesh=mesh,
        in_specs=P(),
        out_specs=state_specs(),
        check_vma=CHECK_VMA,
    )
    return jax.jit(body)


def chunk_over_mesh(
    run: Callable[[TrainState], tuple[TrainState, Any]], mesh: Mesh
) -> Callable[[TrainState], tuple[TrainState, Any]]:
    """``global state -> (global state, metrics)``: ``run`` on every device's view of the state;
    its metrics must already be reduced over `DATA_AXIS` (they come back replicated)."""

    def body(state: TrainState) -> tuple[TrainState, Any]:
        state, metrics = run(local_view(state))
        return global_view(state), metrics

    specs = state_specs()
    sharded = jax.shard_map(
        body, mesh=mesh, in_specs=(specs,), out_specs=(specs, P()), check_vma=CHECK_VMA
    )
    return jax.jit(sharded, donate_argnums=0)
