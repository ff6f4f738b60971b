"""Reading a run's clusters into the domain's `Observation`, for the env and the controller.

Ready replicas come from Deployment status, CPU from PodMetrics, latency and request rate per
proxy from the latency source; `readings` fills what is missing and counts what it assumed.
A read that failed (an API call, a probe, a Prometheus query) is an error of the reading.
The placement itself (replicas, routes) is the caller's mirror: what it asked the clusters for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from hmk8s.domain.observation import Measurement, Observation, build_observation
from hmk8s.domain.params import EnvParams
from hmk8s.domain.state import EnvState
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES
from hmk8s.k8s import objects, readings
from hmk8s.k8s.client import ClusterAccessError, ClusterClient, api_errors
from hmk8s.k8s.config import ClusterMap
from hmk8s.k8s.latency import make_source


@dataclass(frozen=True)
class Sensed:
    """One reading of the clusters: the updated mirror, the observation, and its quality."""

    mirror: EnvState
    obs: Observation
    errors: list[str]
    assumed: dict[str, int]


class ClusterObserver:
    """Reads the objects and metrics of run ``run_id`` in ``clients``' namespaces."""

    def __init__(
        self,
        clients: Sequence[ClusterClient],
        cmap: ClusterMap,
        params: EnvParams,
        run_id: str,
        homes: Sequence[int],
    ) -> None:
        self.clients, self.params, self.run_id = clients, params, run_id
        self.proxies = make_source(clients, cmap, homes, run_id, float(params.timeout_s))
        self.cpu_request = np.asarray(params.cpu_request, np.float64) * cmap.cpu_scale
        self._last_rates = np.zeros(len(homes), np.float32)

    def read_ready(self, mirror: EnvState) -> tuple[np.ndarray, list[str]]:
        """Ready replicas per instance from Deployment status (the mirror's on a failed read),
        never more than the mirror's replicas."""
        ready, errors = self._read_deployments(np.asarray(mirror.ready), "ready")
        return np.minimum(ready, np.asarray(mirror.replicas)).astype(np.int32), errors

    def read_replicas(self) -> np.ndarray:
        """`spec.replicas` per instance; a failed read raises (nothing to adopt then)."""
        lay = self.params.layout
        replicas, errors = self._read_deployments(
            np.zeros((lay.clusters, lay.functions, lay.configs), np.int32), "spec"
        )
        if errors:
            raise ClusterAccessError(errors[0])
        return replicas.astype(np.int32)

    def _read_deployments(self, fallback: np.ndarray, field: str) -> tuple[np.ndarray, list[str]]:
        """Per instance, each cluster's Deployments' `status.readyReplicas` (`field="ready"`) or
        `spec.replicas` (`"spec"`); a cluster whose list fails keeps `fallback`'s values."""
        counts = fallback.copy()
        errors = []
        selector = objects.run_selector(self.run_id)
        for k, client in enumerate(self.clients):
            try:
                found = client.list("Deployment", selector)
            except api_errors() as exc:
                errors.append(f"read Deployments of cluster {k}: {exc}")
                continue
            counts[k] = 0
            for d in found:
                labels = d.metadata.labels or {}
                f, c = labels.get(objects.FUNCTION), labels.get(objects.CONFIG)
                if f in FUNCTION_NAMES and c in CONFIG_NAMES:
                    if field == "spec":
                        n = int(d.spec.replicas or 0)
                    else:
                        n = int((d.status.ready_replicas if d.status else 0) or 0)
                    counts[k, FUNCTION_NAMES.index(f), CONFIG_NAMES.index(c)] = n
        return counts, errors

    def read_cpu(self, ready: np.ndarray) -> tuple[readings.CpuReading, list[str]]:
        usage: dict = {}
        errors = []
        selector = objects.run_selector(self.run_id)
        for k, client in enumerate(self.clients):
            try:
                usage.update(readings.usage_by_instance(k, client.pod_metrics(selector)))
            except api_errors() as exc:
                errors.append(f"read PodMetrics of cluster {k}: {exc}")
        return readings.cpu_utilisation(ready, usage, self.cpu_request), errors

    def observe(self, mirror: EnvState, served: np.ndarray | None) -> Sensed:
        """Read the clusters. CPU is averaged over the pods that served through the step: those
        ready when it began (`served`, None at the first reading) and still ready."""
        ready, read_errors = self.read_ready(mirror)
        cpu, cpu_errors = self.read_cpu(ready if served is None else np.minimum(served, ready))
        latency, rates, proxy_errors = self.proxies.read()
        proxies = readings.fill_proxy_readings(
            latency, rates, self._last_rates, float(self.params.timeout_s)
        )
        self._last_rates = proxies.rates
        mirror = with_observed(mirror, ready, readings.measurement(cpu, proxies))
        obs = build_observation(
            self.params.layout,
            ready=jnp.asarray(ready),
            replicas=mirror.replicas,
            routes=mirror.routes,
            measurement=mirror.measurement,
            sla_s=self.params.sla_s,
            max_pods=self.params.max_pods,
            in_chain=self.params.in_chain,
        )
        assumed = {
            "cpu_pods": cpu.assumed_pods,
            "latency": proxies.assumed_latency,
            "rates": proxies.assumed_rates,
        }
        return Sensed(mirror, obs, read_errors + cpu_errors + proxy_errors, assumed)


def with_observed(mirror: EnvState, ready: np.ndarray, m: Measurement) -> EnvState:
    """The mirror takes the cluster's word for readiness; the rest of `replicas` is starting."""
    replicas = np.asarray(mirror.replicas)
    pending = np.zeros(np.asarray(mirror.pending).shape, np.int32)
    pending[..., 0] = replicas - ready
    return mirror.replace(
        ready=jnp.asarray(ready),
        pending=jnp.asarray(pending),
        measurement=jax.tree.map(jnp.asarray, m),
    )
