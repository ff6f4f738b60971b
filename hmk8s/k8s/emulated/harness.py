"""One call to get the `k8s` backend running against emulated clusters (tests, benchmarks,
dry runs): the API server, a kubeconfig with K contexts, the cluster map and the twin.

    with emulation("ml", {"start": "minimal"}, api_latency_s=0.002, fault_rate=0.1) as emu:
        env = emu.make_env()          # KubernetesClusterEnv, stepped in lock-step with the twin
        obs, info = env.reset(seed=0)

`emulation` serves the API from kmock's emulator (fault injection); `on_server` uses K fresh
namespaces of a real API server (`apiserver.running`) instead, the twin playing kubelet, the
controllers, metrics-server and Prometheus there.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmk8s.domain.usecases import UseCase, load_usecase
from hmk8s.k8s.config import ClusterMap, load_cluster_map
from hmk8s.k8s.emulated.apiclusters import ApiClusters
from hmk8s.k8s.emulated.apiserver import ApiServer
from hmk8s.k8s.emulated.twin import Clusters, Twin, TwinClock
from hmk8s.k8s.env import KubernetesClusterEnv

if TYPE_CHECKING:
    from hmk8s.k8s.emulated.emulator import EmulatedClusters


@dataclass
class Emulation:
    clusters: Clusters
    twin: Twin
    cmap: ClusterMap
    kubeconfig: Path
    usecase: UseCase
    env_cfg: dict[str, Any]

    def make_env(self, **overrides: Any) -> KubernetesClusterEnv:
        """An env on these clusters, its cluster time driven by the twin step by step."""
        cmap = self.cmap.model_copy(update=overrides) if overrides else self.cmap
        return KubernetesClusterEnv(self.usecase, self.env_cfg, cmap, clock=TwinClock(self.twin))


@contextmanager
def emulation(
    usecase: str | Mapping[str, Any] | UseCase = "ml",
    env_cfg: Mapping[str, Any] | None = None,
    *,
    backend: Mapping[str, Any] | None = None,
    workdir: str | Path | None = None,
    **cluster_options: Any,
) -> Iterator[Emulation]:
    """Start K emulated clusters (K from the use case) and their twin; stop them on exit.

    `backend` overrides cluster-map fields; latency comes from the twin's Prometheus API unless
    it says otherwise (`{"latency": {"source": "probe"}}` holds every probe for the simulated
    latency, which is slow);
    `cluster_options` go to `EmulatedClusters` (`api_latency_s`, `fault_rate`, `fault_kinds`,
    `retry_after`, `timeout_hold_s`, `forbidden_namespaces`, `metrics_api`, `seed`, `port`).
    """
    from hmk8s.k8s.emulated.emulator import EmulatedClusters

    uc = usecase if isinstance(usecase, UseCase) else load_usecase(usecase)
    with EmulatedClusters(uc.clusters.count, **cluster_options) as clusters:
        yield from _played(clusters, uc, env_cfg, backend, workdir)


@contextmanager
def on_server(
    server: ApiServer,
    usecase: str | Mapping[str, Any] | UseCase = "ml",
    env_cfg: Mapping[str, Any] | None = None,
    *,
    backend: Mapping[str, Any] | None = None,
    workdir: str | Path | None = None,
    prefix: str | None = None,
) -> Iterator[Emulation]:
    """K fresh namespaces `<prefix>0 … <prefix>K-1` of a real API server (prefix: a random
    `hmk8s-<hex>-`), their twin, and a map whose latency comes from the twin's Prometheus API;
    the objects in them are deleted on exit, so the server's other users never list them."""
    uc = usecase if isinstance(usecase, UseCase) else load_usecase(usecase)
    prefix = prefix or f"hmk8s-{secrets.token_hex(3)}-"
    namespaces = [f"{prefix}{k}" for k in range(uc.clusters.count)]
    with ApiClusters(server.kubeconfig, server.context, namespaces) as clusters:
        clusters.create_namespaces()
        try:
            yield from _played(clusters, uc, env_cfg, backend, workdir)
        finally:
            clusters.delete_objects()


def _played(
    clusters: EmulatedClusters | ApiClusters,
    uc: UseCase,
    env_cfg: Mapping[str, Any] | None,
    backend: Mapping[str, Any] | None,
    workdir: str | Path | None,
) -> Iterator[Emulation]:
    cfg = dict(env_cfg or {})
    with tempfile.TemporaryDirectory(prefix="hmk8s-emulation-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        kubeconfig = clusters.kubeconfig(folder / "kubeconfig")
        data = {**clusters.cluster_map_data(kubeconfig), **dict(backend or {})}
        cmap = load_cluster_map(None, **data)
        twin = Twin(clusters, uc, cmap, cfg)
        yield Emulation(clusters, twin, cmap, kubeconfig, uc, cfg)
