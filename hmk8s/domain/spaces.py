"""The action space: one flat index <-> (cluster, op, config, function, proxy), and its mask.

The layout is the original system's: ``index = (((k * 3 + op) * C + c) * F + f) * P + p``,
with an explicit no-op appended at ``K * 3 * C * F * P`` unless ``noop`` is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

OP_REMOVE, OP_ASSIGN, OP_DEPLOY = 0, 1, 2
OP_NAMES = ("remove", "assign", "deploy")
NUM_OPS = len(OP_NAMES)


class Action(NamedTuple):
    """A decoded action; for the no-op every field is 0 and `noop` is true."""

    cluster: jax.Array
    op: jax.Array
    config: jax.Array
    function: jax.Array
    proxy: jax.Array
    noop: jax.Array


@dataclass(frozen=True)
class ActionLayout:
    """Sizes of the action grid; hashable, so it can be a static field under `jit`."""

    clusters: int
    configs: int
    functions: int
    proxies: int
    noop: bool = True

    @property
    def grid_shape(self) -> tuple[int, int, int, int, int]:
        return (self.clusters, NUM_OPS, self.configs, self.functions, self.proxies)

    @property
    def num_grid(self) -> int:
        return self.clusters * NUM_OPS * self.configs * self.functions * self.proxies

    @property
    def num_actions(self) -> int:
        return self.num_grid + int(self.noop)

    @property
    def noop_index(self) -> int:
        """Index of the explicit no-op; -1 when the layout has none."""
        return self.num_grid if self.noop else -1

    def encode(self, cluster, op, config, function, proxy) -> jax.Array:
        """Flat index of a grid action (works on Python ints and on arrays)."""
        c, f, p = self.configs, self.functions, self.proxies
        return (((cluster * NUM_OPS + op) * c + config) * f + function) * p + proxy

    def decode(self, action: jax.Array) -> Action:
        """Grid coordinates of a flat index; the no-op decodes to zeros with `noop` set."""
        action = jnp.asarray(action)
        noop = action >= self.num_grid
        idx = jnp.where(noop, 0, action)
        idx, proxy = jnp.divmod(idx, self.proxies)
        idx, function = jnp.divmod(idx, self.functions)
        idx, config = jnp.divmod(idx, self.configs)
        cluster, op = jnp.divmod(idx, NUM_OPS)
        return Action(cluster, op, config, function, proxy, noop)

    def check(self, action: object) -> int:
        """Validate a host-side action index, raising a clear error when it is outside the space."""
        as_int = None
        if not isinstance(action, bool):
            try:
                as_int = int(action)  # type: ignore[call-overload]
            except (TypeError, ValueError, OverflowError):
                as_int = None
        if as_int is None or as_int != action:
            raise ValueError(f"action must be an integer index, got {action!r}")
        if not 0 <= as_int < self.num_actions:
            raise ValueError(f"action {as_int} is outside the action space [0, {self.num_actions})")
        return as_int


def action_mask(
    layout: ActionLayout, replicas: jax.Array, max_pods: int | jax.Array, in_chain: jax.Array
) -> jax.Array:
    """Which actions can succeed, given each instance's replica count (ready + starting).

    deploy (k, f, c) needs room on cluster k; remove and assign need the instance to exist;
    every action on a function outside the chain is masked; the no-op always succeeds.
    """
    k, _, c, f, p = layout.grid_shape
    pods = replicas.sum(axis=(1, 2))
    exists = (replicas > 0) & in_chain[None, :, None]
    exists_kcf = jnp.transpose(exists, (0, 2, 1))
    room_kcf = jnp.broadcast_to(
        (pods < max_pods)[:, None, None] & in_chain[None, None, :], (k, c, f)
    )
    by_op = jnp.stack([exists_kcf, exists_kcf, room_kcf], axis=1)
    grid = jnp.broadcast_to(by_op[..., None], (k, NUM_OPS, c, f, p)).reshape(-1)
    if layout.noop:
        grid = jnp.concatenate([grid, jnp.ones((1,), bool)])
    return grid
