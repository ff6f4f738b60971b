"""What the clusters report -> the domain's `Measurement` (pure functions of API data).

Missing or NaN readings are filled conservatively, as the HPA does when it scales down: a ready
pod without a CPU sample counts as using its full request, a proxy without a latency reading
counts as timing out, a proxy without a rate keeps its last known rate. Every fill is counted,
so a step reports how much of its observation was assumed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from hmk8s.domain.observation import Measurement
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES
from hmk8s.k8s import objects

log = logging.getLogger(__name__)
Instance = tuple[int, int, int]


def cpu_cores(quantity: str | None) -> float:
    """A CPU quantity (`250m`, `123456n`, `1`) in cores; NaN when absent or malformed."""
    from kubernetes.utils.quantity import parse_quantity

    if quantity is None:
        return math.nan
    try:
        return float(parse_quantity(quantity))
    except (ValueError, TypeError, ArithmeticError):
        return math.nan


def usage_by_instance(cluster: int, pod_metrics: Iterable[Mapping]) -> dict[Instance, list[float]]:
    """Each PodMetrics' CPU (summed over containers), grouped by the instance its labels name."""
    out: dict[Instance, list[float]] = {}
    for pm in pod_metrics:
        labels = (pm.get("metadata") or {}).get("labels") or {}
        f, c = labels.get(objects.FUNCTION), labels.get(objects.CONFIG)
        if f not in FUNCTION_NAMES or c not in CONFIG_NAMES:
            continue
        containers = pm.get("containers") or []
        usage = sum(cpu_cores((ct.get("usage") or {}).get("cpu")) for ct in containers)
        key = (cluster, FUNCTION_NAMES.index(f), CONFIG_NAMES.index(c))
        out.setdefault(key, []).append(usage if containers else math.nan)
    return out


@dataclass(frozen=True)
class CpuReading:
    instance_util: np.ndarray
    cluster_cpu: np.ndarray
    assumed_pods: int


def cpu_utilisation(
    ready: np.ndarray, usage: Mapping[Instance, list[float]], cpu_request: np.ndarray
) -> CpuReading:
    """CPU usage / request of each instance's ready pods [K, F, C] and of each cluster [K].

    An instance with n ready pods uses its n largest finite samples; each pod short of n is
    assumed at 100 % of its request.
    """
    used = np.zeros(ready.shape, np.float64)
    assumed = 0
    for (k, f, c), n in np.ndenumerate(ready):
        if n <= 0:
            continue
        samples = sorted((u for u in usage.get((k, f, c), []) if math.isfinite(u)), reverse=True)
        samples = samples[:n]
        missing = n - len(samples)
        if missing:
            log.warning(
                "cluster %d %s: %d of %d ready pods lack CPU metrics; assuming 100 %% of the "
                "request (kubectl top pods shows what metrics-server has)",
                k,
                objects.instance_name(f, c),
                missing,
                n,
            )
        assumed += missing
        used[k, f, c] = sum(samples) + missing * float(cpu_request[f, c])
    asked = ready * np.asarray(cpu_request, np.float64)[None]
    inst = np.divide(used, asked, out=np.zeros_like(used), where=asked > 0)
    total_used, total_asked = used.sum(axis=(1, 2)), asked.sum(axis=(1, 2))
    cluster = np.divide(
        total_used, total_asked, out=np.zeros_like(total_used), where=total_asked > 0
    )
    return CpuReading(inst.astype(np.float32), cluster.astype(np.float32), assumed)


@dataclass(frozen=True)
class ProxyReading:
    latency_s: np.ndarray
    rates: np.ndarray
    assumed_latency: int
    assumed_rates: int


def fill_proxy_readings(
    latency_s: np.ndarray, rates: np.ndarray, last_rates: np.ndarray, timeout_s: float
) -> ProxyReading:
    """NaN latency -> the timeout; NaN rate -> the last known rate; latency capped at timeout."""
    lat_missing = ~np.isfinite(latency_s)
    rate_missing = ~np.isfinite(rates) | (rates < 0)
    if lat_missing.any() or rate_missing.any():
        log.warning(
            "proxies without latency %s, without rate %s; assuming the timeout and the last "
            "rate (check backend.latency and the proxies' /probe)",
            np.flatnonzero(lat_missing).tolist(),
            np.flatnonzero(rate_missing).tolist(),
        )
    latency = np.minimum(np.where(lat_missing, timeout_s, latency_s), timeout_s)
    filled = np.where(rate_missing, last_rates, rates)
    return ProxyReading(
        latency.astype(np.float32),
        filled.astype(np.float32),
        int(lat_missing.sum()),
        int(rate_missing.sum()),
    )


def measurement(cpu: CpuReading, proxies: ProxyReading) -> Measurement:
    return Measurement(
        rates=proxies.rates,
        instance_util=cpu.instance_util,
        cluster_cpu=cpu.cluster_cpu,
        latency_s=proxies.latency_s,
    )
