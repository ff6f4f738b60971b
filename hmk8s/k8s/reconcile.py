"""Desired placement -> API calls, level-triggered: what failed stays in the diff and is retried.

`plan` is pure (desired vs. applied -> ordered operations); `Reconciler` executes a plan and
remembers only what succeeded, so a step whose calls fail leaves the run consistent and the next
step repairs it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES, UseCase
from hmk8s.k8s import objects
from hmk8s.k8s.client import ClusterClient, api_errors
from hmk8s.k8s.config import ClusterMap
from hmk8s.k8s.objects import Hop

log = logging.getLogger(__name__)
Instance = tuple[int, int, int]


@dataclass(frozen=True)
class Placement:
    """Replicas per existing instance (k, f, c) and each proxy's hops, in chain order."""

    replicas: dict[Instance, int]
    chains: dict[int, tuple[Hop, ...]]


def placement_of(replicas: np.ndarray, routes: np.ndarray, chain: Sequence[int]) -> Placement:
    """Read the domain's arrays: replicas i32[K, F, C], routes i32[P, F] (k * C + c, or -1)."""
    configs = replicas.shape[2]
    counts = {
        (int(k), int(f), int(c)): int(replicas[k, f, c])
        for k, f, c in zip(*np.nonzero(replicas), strict=True)
    }
    chains = {}
    for p in range(routes.shape[0]):
        hops = []
        for f in chain:
            r = int(routes[p, f])
            hops.append(Hop(f, None, None) if r < 0 else Hop(f, r // configs, r % configs))
        chains[p] = tuple(hops)
    return Placement(counts, chains)


@dataclass(frozen=True)
class Op:
    """One reconciliation step: `scale` creates or resizes, `delete` removes, `chain` rewrites."""

    kind: str
    cluster: int
    instance: Instance | None = None
    replicas: int = 0
    proxy: int | None = None
    hops: tuple[Hop, ...] = ()


def plan(desired: Placement, applied: Placement, homes: Sequence[int]) -> list[Op]:
    """Scale-ups and creations first, then chains (so proxies point at live Services), then
    deletions (after no chain points at them any more)."""
    ops = [
        Op("scale", inst[0], inst, n)
        for inst, n in sorted(desired.replicas.items())
        if applied.replicas.get(inst) != n
    ]
    ops += [
        Op("chain", homes[p], proxy=p, hops=hops)
        for p, hops in sorted(desired.chains.items())
        if applied.chains.get(p) != hops
    ]
    ops += [
        Op("delete", inst[0], inst)
        for inst in sorted(applied.replicas)
        if inst not in desired.replicas
    ]
    return ops


@dataclass
class Reconciler:
    """Brings the clusters to a desired placement and tracks what is known to be applied."""

    clients: Sequence[ClusterClient]
    cmap: ClusterMap
    usecase: UseCase
    run_id: str
    applied: Placement = field(default_factory=lambda: Placement({}, {}))
    services: set[Instance] = field(default_factory=set)
    # proxies whose chain ConfigMap could not be read at `discover` (why), not in `applied`
    unreadable: dict[int, str] = field(default_factory=dict)

    @property
    def homes(self) -> list[int]:
        return [p.home for p in self.usecase.proxies]

    def discover(self) -> None:
        """Rebuild `applied` from the run's objects in the clusters (at reset)."""
        replicas: dict[Instance, int] = {}
        chains: dict[int, tuple[Hop, ...]] = {}
        services: set[Instance] = set()
        unreadable: dict[int, str] = {}
        selector = objects.run_selector(self.run_id)
        for k, client in enumerate(self.clients):
            for d in client.list("Deployment", selector):
                labels = d.metadata.labels or {}
                inst = instance_from_labels(k, labels)
                if inst is not None:
                    replicas[inst] = int(d.spec.replicas or 0)
            for s in client.list("Service", selector):
                inst = instance_from_labels(k, s.metadata.labels or {})
                if inst is not None:
                    services.add(inst)
            for cm in client.list("ConfigMap", selector):
                for p, home in enumerate(self.homes):
                    if home == k and cm.metadata.name == objects.chain_configmap_name(self.cmap, p):
                        try:
                            hops = objects.parse_chain((cm.data or {}).get(objects.CHAIN_KEY))
                        except objects.ChainFormatError as err:
                            log.warning("%s: %s; its chain is unknown", cm.metadata.name, err)
                            unreadable[p] = str(err)
                            continue
                        chains[p] = tuple(Hop(f, kk, c) for f, kk, c in hops)
        self.applied = Placement(replicas, chains)
        self.services = services
        self.unreadable = unreadable

    def apply(self, desired: Placement, *, dry_run: bool = False) -> list[str]:
        """Execute the plan; returns one message per failed operation (empty when all held).

        With ``dry_run`` every call goes to the API with ``dryRun=All``: the server validates and
        admits it (or refuses it, reported like a failure) and stores nothing, and `applied`
        stays as it was."""
        errors = []
        for op in plan(desired, self.applied, self.homes):
            try:
                self._execute(op, dry_run)
            except api_errors() as exc:
                log.warning("reconcile %s failed: %s", op.kind, exc)
                errors.append(f"{op.kind} {self._describe(op)}: {exc}")
        return errors

    def _execute(self, op: Op, dry_run: bool = False) -> None:
        client = self.clients[op.cluster]
        replicas = dict(self.applied.replicas)
        chains = dict(self.applied.chains)
        if op.kind == "scale":
            _, f, c = op.instance
            exists = op.instance in self.applied.replicas or None
            body = objects.deployment(self.cmap, self.usecase, self.run_id, f, c, op.replicas)
            client.apply(body, exists=exists, dry_run=dry_run)
            if op.instance not in self.services:
                service = objects.service(self.cmap, self.run_id, f, c)
                client.apply(service, exists=None, dry_run=dry_run)
                if not dry_run:
                    self.services.add(op.instance)
            replicas[op.instance] = op.replicas
        elif op.kind == "chain":
            home = self.homes[op.proxy]
            body = objects.chain_configmap(self.cmap, self.run_id, op.proxy, home, op.hops)
            client.apply(body, exists=op.proxy in self.applied.chains or None, dry_run=dry_run)
            chains[op.proxy] = op.hops
        else:
            name = objects.instance_name(*op.instance[1:])
            client.delete("Service", name, dry_run=dry_run)
            if not dry_run:
                self.services.discard(op.instance)
            client.delete("Deployment", name, dry_run=dry_run)
            replicas.pop(op.instance)
        if not dry_run:
            self.applied = Placement(replicas, chains)

    def _describe(self, op: Op) -> str:
        if op.kind == "chain":
            return objects.chain_configmap_name(self.cmap, op.proxy)
        k, f, c = op.instance
        return f"{self.cmap.clusters[k].namespace}/{objects.instance_name(f, c)}"


def instance_from_labels(cluster: int, labels: dict[str, str]) -> Instance | None:
    f, c = labels.get(objects.FUNCTION), labels.get(objects.CONFIG)
    if f in FUNCTION_NAMES and c in CONFIG_NAMES:
        return cluster, FUNCTION_NAMES.index(f), CONFIG_NAMES.index(c)
    return None
