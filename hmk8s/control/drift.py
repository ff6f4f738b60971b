"""Check before acting: the live objects against what the controller applied.

Each step the controller reads back the replicas of the run's Deployments and the proxies'
chain ConfigMaps, hops and endpoints both, and compares them with what it last applied
(`Reconciler.applied`). A difference is a `Conflict`: someone else (``kubectl scale``, an edited
endpoint) changed a managed object. The controller then repairs it (the reconciler is told the
live value, so its next plan writes the applied one back) or holds, and says which; it never
overwrites silently. A chain document it cannot parse is a reading error: it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hmk8s.domain.usecases import FUNCTION_NAMES
from hmk8s.k8s import objects
from hmk8s.k8s.client import ClusterClient, api_errors
from hmk8s.k8s.config import ClusterMap
from hmk8s.k8s.reconcile import Instance, Placement, instance_from_labels


@dataclass(frozen=True)
class Conflict:
    """One managed field that differs from what was applied; ``readable`` is False when the
    object could not be parsed at all (then it is never repaired blindly)."""

    cluster: int
    kind: str
    name: str
    field: str
    applied: str
    live: str
    readable: bool = True

    def __str__(self) -> str:
        return (
            f"cluster {self.cluster} {self.kind} {self.name} {self.field}: "
            f"applied {self.applied}, found {self.live}"
        )


@dataclass(frozen=True)
class LiveObjects:
    """What the clusters hold now: replicas per instance of the run's Deployments, and each
    proxy's chain document (None: its ConfigMap or its ``chain.json`` is absent)."""

    replicas: dict[Instance, int]
    chains: dict[int, object]
    errors: list[str] = field(default_factory=list)
    read: set[int] = field(default_factory=set)  # clusters whose Deployments were listed


def read_live(
    clients: Sequence[ClusterClient], cmap: ClusterMap, homes: Sequence[int], run_id: str
) -> LiveObjects:
    """List the run's Deployments and read each proxy's chain ConfigMap by name (so a
    ConfigMap stripped of its labels is still found)."""
    replicas: dict[Instance, int] = {}
    chains: dict[int, object] = {}
    errors: list[str] = []
    read: set[int] = set()
    for k, client in enumerate(clients):
        try:
            found = client.list("Deployment", objects.run_selector(run_id))
        except api_errors() as exc:
            errors.append(f"read Deployments of cluster {k}: {exc}")
            continue
        read.add(k)
        for d in found:
            inst = instance_from_labels(k, d.metadata.labels or {})
            if inst is not None:
                replicas[inst] = int(d.spec.replicas or 0)
    for p, home in enumerate(homes):
        name = objects.chain_configmap_name(cmap, p)
        try:
            cm = clients[home].read("ConfigMap", name)
        except api_errors() as exc:
            errors.append(f"read ConfigMap {name} of cluster {home}: {exc}")
            continue
        chains[p] = None if cm is None else (cm.data or {}).get(objects.CHAIN_KEY)
    return LiveObjects(replicas, chains, errors, read)


def _hops_text(hops: Sequence[tuple[objects.Hop, str | None]]) -> str:
    return ", ".join(f"{FUNCTION_NAMES[h.function]}→{e or 'none'}" for h, e in hops) or "none"


def conflicts(
    applied: Placement,
    live: LiveObjects,
    cmap: ClusterMap,
    homes: Sequence[int],
    unreadable: dict[int, str] | None = None,
) -> list[Conflict]:
    """Every applied replica count, hop and endpoint that the live objects do not hold (pure).
    ``unreadable``: proxies whose chain could not be read when the placement was adopted."""
    out = []
    for inst, n in sorted(applied.replicas.items()):
        k, f, c = inst
        if k not in live.read:
            continue
        got = live.replicas.get(inst)
        if got != n:
            name = objects.instance_name(f, c)
            shown = "no Deployment" if got is None else str(got)
            out.append(Conflict(k, "Deployment", name, "spec.replicas", str(n), shown))
    for p in sorted(set(applied.chains) | set(unreadable or {})):
        if p not in live.chains:
            continue
        name = objects.chain_configmap_name(cmap, p)
        home = homes[p]
        document = live.chains[p]
        if p not in applied.chains:
            out.append(Conflict(home, "ConfigMap", name, "chain.json", "unknown", "unreadable"))
            continue
        want = [(h, objects.endpoint(cmap, home, h)) for h in applied.chains[p]]
        if document is None:
            out.append(Conflict(home, "ConfigMap", name, "chain.json", _hops_text(want), "absent"))
            continue
        try:
            got = objects.read_chain(document)
        except objects.ChainFormatError as err:
            out.append(
                Conflict(home, "ConfigMap", name, "chain.json", _hops_text(want), str(err), False)
            )
            continue
        if got != want:
            out.append(Conflict(home, "ConfigMap", name, "hops", _hops_text(want), _hops_text(got)))
    return out


def repaired(applied: Placement, found: Sequence[Conflict], cmap: ClusterMap) -> Placement:
    """``applied`` as the clusters now hold it, so reconciling writes the applied values back:
    a drifted replica count takes its live value (a deleted Deployment leaves the placement),
    a drifted chain leaves it (and is rewritten whole)."""
    replicas, chains = dict(applied.replicas), dict(applied.chains)
    for c in found:
        if c.kind == "Deployment":
            inst = next(i for i in replicas if i[0] == c.cluster and _name(i) == c.name)
            if c.live.isdigit():
                replicas[inst] = int(c.live)
            else:
                replicas.pop(inst)
        else:
            p = next(p for p in chains if objects.chain_configmap_name(cmap, p) == c.name)
            chains.pop(p)
    return Placement(replicas, chains)


def _name(inst: Instance) -> str:
    return objects.instance_name(inst[1], inst[2])
