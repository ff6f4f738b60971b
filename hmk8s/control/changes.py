"""What an action changes, in the words of the objects it touches: object, field, old -> new.

Both backends describe a step the same way: the domain's placement before and after, planned
into the operations the reconciler would send (`hmk8s.k8s.reconcile.plan`), each read as a
change of a Deployment's replicas or of a hop in a proxy's chain ConfigMap.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from hmk8s.domain.observation import Observation
from hmk8s.domain.params import EnvParams
from hmk8s.domain.placement import apply_action
from hmk8s.domain.state import EnvState
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES
from hmk8s.k8s.objects import Hop, instance_name
from hmk8s.k8s.reconcile import Op, Placement, placement_of, plan

DEFAULT_CHAIN_CONFIGMAP = "proxy{p}-chain"


@dataclass(frozen=True)
class Change:
    """One field of one object: ``cluster 1 Deployment hmk8s-encrypt-medium spec.replicas:
    1 -> 2``; ``cluster``, ``kind`` and ``name`` say which object (for its Events)."""

    object: str
    field: str
    old: str
    new: str
    cluster: int = -1
    kind: str = ""
    name: str = ""

    def __str__(self) -> str:
        return f"{self.object} {self.field}: {self.old} → {self.new}"


def placement_from(obs: Observation, params: EnvParams) -> Placement:
    """The placement an observation shows: replicas (ready and starting) and routes."""
    return placement_of(np.asarray(obs.replicas), np.asarray(obs.routes), params.chain)


def mirror_from(obs: Observation, like: EnvState) -> EnvState:
    """A simulator state holding the observed placement (starting pods one step from ready),
    shaped like ``like``: what `apply_action` needs to plan the next step."""
    replicas, ready = np.asarray(obs.replicas), np.asarray(obs.ready)
    pending = np.zeros(np.asarray(like.pending).shape, np.int32)
    pending[..., 0] = replicas - ready
    return like.replace(
        ready=jnp.asarray(ready, jnp.int32),
        pending=jnp.asarray(pending),
        routes=jnp.asarray(obs.routes, jnp.int32),
        backlog=jnp.zeros_like(like.backlog),
    )


_apply = jax.jit(apply_action)


def after_action(
    key: jax.Array, mirror: EnvState, action: int, params: EnvParams
) -> tuple[EnvState, bool]:
    """The domain's `apply_action` on a host-side mirror: (new mirror, whether it was invalid)."""
    state, invalid = _apply(key, mirror, jnp.int32(action), params)
    return state, bool(invalid)


def mirror_placement(mirror: EnvState, params: EnvParams) -> Placement:
    return placement_of(np.asarray(mirror.replicas), np.asarray(mirror.routes), params.chain)


def _hop_text(hop: Hop | None) -> str:
    if hop is None:
        return "absent"
    if hop.cluster is None or hop.config is None:
        return "broken"
    return f"{CONFIG_NAMES[hop.config]} on cluster {hop.cluster}"


def describe(
    ops: list[Op],
    applied: Placement,
    chain_configmap: str = DEFAULT_CHAIN_CONFIGMAP,
) -> list[Change]:
    """The reconciler's operations against ``applied`` as field changes."""
    out: list[Change] = []
    for op in ops:
        if op.kind == "chain":
            name = chain_configmap.format(p=op.proxy)
            obj = f"cluster {op.cluster} ConfigMap {name}"
            before = {h.function: h for h in applied.chains.get(op.proxy, ())}
            for hop in op.hops:
                old = before.get(hop.function)
                if old != hop:
                    field = f"hop {FUNCTION_NAMES[hop.function]}"
                    out.append(
                        Change(
                            obj,
                            field,
                            _hop_text(old),
                            _hop_text(hop),
                            op.cluster,
                            "ConfigMap",
                            name,
                        )
                    )
            continue
        k, f, c = op.instance
        name = instance_name(f, c)
        obj = f"cluster {k} Deployment {name}"
        old = applied.replicas.get(op.instance)
        new = "deleted" if op.kind == "delete" else str(op.replicas)
        shown = "absent" if old is None else str(old)
        out.append(Change(obj, "spec.replicas", shown, new, k, "Deployment", name))
    return out


def placement_changes(
    before: Placement,
    after: Placement,
    homes: list[int],
    chain_configmap: str = DEFAULT_CHAIN_CONFIGMAP,
) -> list[Change]:
    """What turning ``before`` into ``after`` changes."""
    return describe(plan(after, before, homes), before, chain_configmap)
