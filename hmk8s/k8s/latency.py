"""Per-proxy latency and request rate: timed probes through each proxy, or Prometheus queries.

Both return NaN for what they could not read, and say why: a probe or query that failed is an
error of the step, as a failed API call is, so a source that keeps failing stops the run after
`max_failed_steps` (`KubernetesClusterEnv`) instead of training on readings it never had.
`readings.fill_proxy_readings` decides what a missing value means for the one step.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from string import Template
from typing import Protocol

import numpy as np

from hmk8s.k8s import objects
from hmk8s.k8s.client import ClusterClient, api_errors
from hmk8s.k8s.config import ClusterMap

log = logging.getLogger(__name__)


Readings = tuple[np.ndarray, np.ndarray, list[str]]


class ProxySource(Protocol):
    def read(self) -> Readings:
        """(latency in seconds, requests/s) per proxy, NaN where unknown, and the failed reads."""
        ...


class ProbeSource:
    """Timed GETs of each proxy's probe path through the API server's service proxy.

    The proxy forwards the probe along its chain and answers `{"ok": bool, "rate": float}`; the
    latency is the median wall time of the probes, or the timeout when a hop failed.
    """

    def __init__(
        self,
        clients: Sequence[ClusterClient],
        cmap: ClusterMap,
        homes: Sequence[int],
        timeout_s: float,
    ) -> None:
        self.clients, self.cmap, self.homes, self.timeout_s = clients, cmap, homes, timeout_s

    def read(self) -> Readings:
        latency = np.full(len(self.homes), np.nan)
        rates = np.full(len(self.homes), np.nan)
        errors = []
        for p, home in enumerate(self.homes):
            client = self.clients[home]
            service = f"{objects.proxy_name(self.cmap, p)}:{self.cmap.proxy_port}"
            times, ok = [], True
            try:
                for _ in range(self.cmap.latency.probe_requests):
                    start = time.perf_counter()
                    _, body = client.service_get(
                        client.namespace, service, self.cmap.latency.probe_path
                    )
                    times.append(time.perf_counter() - start)
                    answer = json.loads(body)
                    ok = ok and bool(answer.get("ok"))
                    rates[p] = float(answer.get("rate", math.nan))
            except (*api_errors(), ValueError, AttributeError) as exc:
                log.warning("probe of %s failed: %s", service, exc)
                errors.append(f"probe of {service}: {exc}")
                continue
            latency[p] = statistics.median(times) if ok else self.timeout_s
        return latency, rates, errors


class PrometheusSource:
    """Instant queries per proxy, through `prometheus_url` or the API server's service proxy."""

    def __init__(
        self,
        clients: Sequence[ClusterClient],
        cmap: ClusterMap,
        homes: Sequence[int],
        run_id: str,
    ) -> None:
        self.clients, self.cmap, self.homes, self.run_id = clients, cmap, homes, run_id

    def queries(self, p: int) -> tuple[str, str]:
        """The latency and rate queries of proxy p, placeholders substituted."""
        values = {
            "proxy": objects.proxy_name(self.cmap, p),
            "namespace": self.cmap.clusters[self.homes[p]].namespace,
            "run_id": self.run_id,
        }
        lat = self.cmap.latency
        return (
            Template(lat.query).safe_substitute(values),
            Template(lat.rate_query).safe_substitute(values),
        )

    def read(self) -> Readings:
        latency = np.full(len(self.homes), np.nan)
        rates = np.full(len(self.homes), np.nan)
        errors: list[str] = []
        for p, home in enumerate(self.homes):
            lat_q, rate_q = self.queries(p)
            latency[p] = self._instant(home, lat_q, errors)
            rates[p] = self._instant(home, rate_q, errors)
        return latency, rates, errors

    def _instant(self, cluster: int, query: str, errors: list[str]) -> float:
        """The query's value; NaN when it has none, and NaN with an error when it failed."""
        try:
            body = self._get(cluster, query)
            result = json.loads(body)["data"]["result"]
            return float(result[0]["value"][1]) if result else math.nan
        except (*api_errors(), ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("prometheus query %r failed: %s", query, exc)
            errors.append(f"prometheus query {query!r}: {exc}")
            return math.nan

    def _get(self, cluster: int, query: str) -> str:
        client = self.clients[cluster]
        url = self.cmap.latency.prometheus_url
        if url:
            full = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"

            def fetch() -> str:
                with urllib.request.urlopen(full, timeout=self.cmap.api.timeout_s) as resp:
                    return resp.read().decode()

            return client.retrier.call(f"GET {full}", fetch)
        namespace, service = self.cmap.latency.prometheus_service.split("/", 1)
        _, body = client.service_get(namespace, service, "api/v1/query", [("query", query)])
        return body


def make_source(
    clients: Sequence[ClusterClient],
    cmap: ClusterMap,
    homes: Sequence[int],
    run_id: str,
    timeout_s: float,
) -> ProxySource:
    if cmap.latency.source == "prometheus":
        return PrometheusSource(clients, cmap, homes, run_id)
    return ProbeSource(clients, cmap, homes, timeout_s)
