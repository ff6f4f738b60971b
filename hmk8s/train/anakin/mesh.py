"""Scale-out for the Anakin loop: a ``seed`` by ``data`` device mesh.

Along ``data`` one agent is trained data-parallel: each device steps its share of the envs,
keeps its own replay shard and its own keys, and computes gradients on its own batch; the
update averages them over the axis (`jax.lax.pmean`), so the learner stays replicated along
it. Along ``seed`` the independent runs of ``seeds=N`` are split: each row of the mesh trains
``N / seed_devices`` of them, with no communication between rows.

In the global train state every field has the leading seed axis of `jax.vmap`, sharded over
``seed``; the per-device fields (`DEVICE_FIELDS`) carry a device axis before it, sharded over
``data``.
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
SEED_AXIS = "seed"
DEVICE_FIELDS = ("buffer", "env_state", "obs", "mask", "hint", "episode_return", "rng")
# An env may return values the same on every device (a constant mask, a hint of -1), so the
# per-device carry cannot be type-checked as varying; the learner is replicated by the
# gradient average, which the tests check on the devices' buffers.
CHECK_VMA = False


def make_mesh(devices: int, seed_devices: int = 1) -> Mesh:
    """A ``(seed_devices, devices / seed_devices)`` mesh over the first ``devices`` of
    `jax.devices()`. With several processes every process holds a block of every seed row, so
    the seed-indexed fields (learner, counters, metrics) stay readable in each process."""
    available = jax.devices()
    if not 1 <= devices <= len(available):
        raise ValueError(f"devices={devices}: this run sees {len(available)} devices")
    if seed_devices < 1 or devices % seed_devices:
        raise ValueError(f"seed_devices={seed_devices} does not divide devices={devices}")
    chosen = available[:devices]
    processes = sorted({d.process_index for d in chosen})
    local = [[d for d in chosen if d.process_index == p] for p in processes]
    if any(len(group) % seed_devices for group in local):
        raise ValueError(
            f"seed_devices={seed_devices} does not divide each process's {len(local[0])} devices"
        )
    per_row = [len(group) // seed_devices for group in local]
    rows = [
        [d for group, k in zip(local, per_row, strict=True) for d in group[s * k : (s + 1) * k]]
        for s in range(seed_devices)
    ]
    return Mesh(np.array(rows), (SEED_AXIS, DATA_AXIS))


def state_specs() -> TrainState:
    """Partition of the global train state: the seed axis over ``seed`` and, for the
    per-device fields, the device axis before it over ``data``."""
    return TrainState(
        **{
            f: P(DATA_AXIS, SEED_AXIS) if f in DEVICE_FIELDS else P(SEED_AXIS)
            for f in TrainState._fields
        }
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
    """``keys -> global state``: ``init`` (seed-batched) run on every device from its row's seed
    keys; it must draw its per-device keys from `jax.lax.axis_index` of `DATA_AXIS`."""
    body = jax.shard_map(
        lambda keys: global_view(init(keys)),
        mesh=mesh,
        in_specs=P(SEED_AXIS),
        out_specs=state_specs(),
        check_vma=CHECK_VMA,
    )
    return jax.jit(body)


def chunk_over_mesh(
    run: Callable[[TrainState], tuple[TrainState, Any]], mesh: Mesh
) -> Callable[[TrainState], tuple[TrainState, Any]]:
    """``global state -> (global state, metrics)``: ``run`` on every device's view of the state;
    its metrics, seed-batched, must already be reduced over `DATA_AXIS`."""

    def body(state: TrainState) -> tuple[TrainState, Any]:
        state, metrics = run(local_view(state))
        return global_view(state), metrics

    specs = state_specs()
    sharded = jax.shard_map(
        body, mesh=mesh, in_specs=(specs,), out_specs=(specs, P(SEED_AXIS)), check_vma=CHECK_VMA
    )
    return jax.jit(sharded, donate_argnums=0)
