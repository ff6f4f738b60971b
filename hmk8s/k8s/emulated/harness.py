"""One call to get the `k8s` backend running against emulated clusters (tests, benchmarks,
dry runs): the loopback API server, a kubeconfig with K contexts, the cluster map and the twin.

    with emulation("ml", {"start": "minimal"}, api_latency_s=0.002, fault_rate=0.1) as emu:
        env = emu.make_env()          # KubernetesClusterEnv, stepped in lock-step with the twin
        obs, info = env.reset(seed=0)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmk8s.k8s.config import ClusterMap, load_cluster_map
from hmk8s.k8s.emulated.emulator import EmulatedClusters
from hmk8s.k8s.emulated.twin import Twin, TwinClock
from hmk8s.k8s.env import KubernetesClusterEnv
from hmk8s.usecases import UseCase, load_usecase


@dataclass
class Emulation:
    clusters: EmulatedClusters
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
    uc = usecase if isinstance(usecase, UseCase) else load_usecase(usecase)
    cfg = dict(env_cfg or {})
    with tempfile.TemporaryDirectory(prefix="hmk8s-emulation-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        with EmulatedClusters(uc.clusters.count, **cluster_options) as clusters:
            kubeconfig = clusters.kubeconfig(folder / "kubeconfig")
            cmap = load_cluster_map(
                None,
                **clusters.cluster_map_data(kubeconfig),
                **{"latency": {"source": "prometheus"}, **dict(backend or {})},
            )
            twin = Twin(clusters, uc, cmap, cfg)
            yield Emulation(clusters, twin, cmap, kubeconfig, uc, cfg)
