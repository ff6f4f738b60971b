"""The emulated cluster's physics: the simulator's own dynamics, driven by what the backend wrote.

The twin reads the Deployments and chain ConfigMaps from the API server (the loopback emulator,
or a real server through `apiclusters.ApiClusters`), brings its simulator
state to that placement with the domain's `apply_action` (one replica at a time, removals first,
exactly as the simulator would have), plays a step with the domain's `advance`, and writes back
what a cluster reports: Deployment status, PodMetrics, and the latency and rate each proxy
answers to probes and Prometheus queries. Stepped with the keys the simulator uses, it makes
`k8s`-over-emulator reproduce `sim` exactly.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from hmk8s import sim
from hmk8s.domain.placement import apply_action
from hmk8s.domain.spaces import OP_DEPLOY, OP_REMOVE
from hmk8s.domain.state import EnvState
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES, UseCase
from hmk8s.k8s import objects
from hmk8s.k8s.config import ClusterMap
from hmk8s.sim.dynamics import advance, measure

if TYPE_CHECKING:
    from hmk8s.k8s.emulated.emulator import ServiceHandler

log = logging.getLogger(__name__)
DEPLOYMENTS, CONFIGMAPS = "apps/v1/deployments", "v1/configmaps"
_LABEL = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_apply_action = jax.jit(apply_action)
_advance = jax.jit(advance)
_measure = jax.jit(measure)
_reset = jax.jit(lambda key, params: sim.ClusterEnv().reset(key, params))


class Clusters(Protocol):
    """The API server the twin plays: what it reads, and what it writes in place of kubelet,
    the controllers, metrics-server and Prometheus."""

    def objects(self, resource: str, namespace: str | None = None, selector: str = "") -> list:
        """Live objects of a resource (`apps/v1/deployments`), as a list call returns them."""
        ...

    def write_status(self, namespace: str, name: str, status: dict) -> None: ...

    def put_pod_metrics(self, namespace: str, name: str, body: dict) -> None: ...

    def remove_pod_metrics(self, namespace: str, name: str) -> None: ...

    def serve_with(self, handler: ServiceHandler) -> None: ...


class Twin:
    """Plays every hmk8s object in the emulated clusters; `reset`/`advance` are one step each.

    With `samples_metrics` off it plays a metrics-server that has no samples: the next step
    removes every PodMetrics it wrote and writes none until it is back on.
    """

    def __init__(
        self,
        clusters: Clusters,
        usecase: UseCase,
        cmap: ClusterMap,
        env_cfg: Mapping[str, Any] | None = None,
        namespaces: list[str] | None = None,
        *,
        serve: bool = True,
    ) -> None:
        self.clusters = clusters
        self.usecase = usecase
        self.cmap = cmap
        _, self.params = sim.make(usecase, env_cfg)
        self.namespaces = namespaces or [c.namespace for c in cmap.clusters]
        self.state: EnvState | None = None
        self._proxies: dict[tuple[str, str], tuple[float, float, bool]] = {}
        self._metrics: set[tuple[str, str]] = set()
        self.samples_metrics = True
        self._deployments: list[list[dict]] = []
        lay = self.params.layout
        self._measured_ready = np.zeros((lay.clusters, lay.functions, lay.configs), np.int32)
        self._lock = threading.Lock()
        if serve:
            clusters.serve_with(self.serve)

    def reset(self, key: jax.Array) -> None:
        """A new episode: what the backend placed is ready at once, as in the simulator."""
        _, start = _reset(key, self.params)
        with self._lock:
            state = self._sync(start, ready_now=True)
            if not _same_placement(state, start):
                measurement, _, _, _ = _measure(jax.random.fold_in(key, 1), state, self.params)
                state = state.replace(measurement=measurement)
            self.state = state
            self._measured_ready = np.asarray(state.ready)
            self._publish()

    def advance(self, key: jax.Array) -> None:
        """One step of cluster time on the placement the backend wrote."""
        with self._lock:
            if self.state is None:
                _, self.state = _reset(jax.random.PRNGKey(0), self.params)
            state = self._sync(self.state, ready_now=False)
            self._measured_ready = np.asarray(state.ready)
            self.state = _advance(key, state, self.params)
            self._publish()

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        """Desired replicas and routes as the backend wrote them (Deployments are kept for
        `_publish`)."""
        lay = self.params.layout
        desired = np.zeros((lay.clusters, lay.functions, lay.configs), np.int32)
        routes = np.full((lay.proxies, lay.functions), -1, np.int32)
        selector = objects.run_selector(None)
        deployments = []
        for k, ns in enumerate(self.namespaces):
            found = self.clusters.objects(DEPLOYMENTS, ns, selector)
            deployments.append(found)
            for d in found:
                labels = d["metadata"].get("labels") or {}
                f = FUNCTION_NAMES.index(labels[objects.FUNCTION])
                c = CONFIG_NAMES.index(labels[objects.CONFIG])
                desired[k, f, c] = int(d["spec"].get("replicas") or 0)
        for p, proxy in enumerate(self.usecase.proxies):
            name = objects.chain_configmap_name(self.cmap, p)
            for cm in self.clusters.objects(CONFIGMAPS, self.namespaces[proxy.home], selector):
                if cm["metadata"]["name"] != name:
                    continue
                try:
                    hops = objects.parse_chain((cm.get("data") or {}).get(objects.CHAIN_KEY))
                except objects.ChainFormatError:
                    continue  # a proxy keeps its last good chain
                for f, k, c in hops:
                    if k is not None and c is not None:
                        routes[p, f] = k * lay.configs + c
        self._deployments = deployments
        return desired, routes

    def _sync(self, state: EnvState, *, ready_now: bool) -> EnvState:
        desired, routes = self._read()
        if ready_now:
            state = state.replace(
                ready=jnp.asarray(desired),
                pending=jnp.zeros_like(state.pending),
                backlog=jnp.where(jnp.asarray(desired) > 0, state.backlog, 0.0),
            )
        else:
            state = self._scale(state, desired)
        return state.replace(routes=jnp.asarray(routes))

    def _scale(self, state: EnvState, desired: np.ndarray) -> EnvState:
        """Removals first (freeing room), then deployments, one replica per domain action."""
        lay = self.params.layout
        key = jax.random.PRNGKey(0)
        current = np.asarray(state.replicas)
        for op, sign in ((OP_REMOVE, -1), (OP_DEPLOY, 1)):
            for (k, f, c), want in np.ndenumerate(desired):
                for _ in range(max(0, sign * (int(want) - int(current[k, f, c])))):
                    action = lay.encode(k, op, c, f, 0)
                    state, invalid = _apply_action(key, state, jnp.int32(action), self.params)
                    if bool(invalid):
                        log.warning(
                            "twin: cannot %s %s on cluster %d",
                            "remove" if op == OP_REMOVE else "deploy",
                            objects.instance_name(f, c),
                            k,
                        )
        return state

    def _publish(self) -> None:
        """Status from the ready pods; PodMetrics for the pods that served through the step (a
        pod that has just become ready has no sample yet, as with metrics-server)."""
        state, m = self.state, self.state.measurement
        ready = np.asarray(state.ready)
        measured = self._measured_ready
        util = np.asarray(m.instance_util, np.float64)
        request = np.asarray(self.params.cpu_request, np.float64)
        live_metrics = set()
        for k, ns in enumerate(self.namespaces):
            for d in self._deployments[k]:
                labels = d["metadata"]["labels"]
                f = FUNCTION_NAMES.index(labels[objects.FUNCTION])
                c = CONFIG_NAMES.index(labels[objects.CONFIG])
                n = int(ready[k, f, c])
                spec = int(d["spec"].get("replicas") or 0)
                status = {
                    "replicas": spec,
                    "readyReplicas": n,
                    "availableReplicas": n,
                    "updatedReplicas": spec,
                    "observedGeneration": 1,
                }
                self.clusters.write_status(ns, d["metadata"]["name"], status)
                pod_labels = d["spec"]["template"]["metadata"]["labels"]
                nanocores = round(util[k, f, c] * request[f, c] * 1e9)
                for i in range(int(measured[k, f, c]) if self.samples_metrics else 0):
                    name = f"{d['metadata']['name']}-{i}"
                    live_metrics.add((ns, name))
                    self.clusters.put_pod_metrics(
                        ns, name, _pod_metrics(ns, name, pod_labels, nanocores)
                    )
        for ns, name in self._metrics - live_metrics:
            self.clusters.remove_pod_metrics(ns, name)
        self._metrics = live_metrics
        routes = np.asarray(state.routes)[:, list(self.params.chain)]
        self._proxies = {
            (self.namespaces[proxy.home], objects.proxy_name(self.cmap, p)): (
                float(m.latency_s[p]),
                float(m.rates[p]),
                bool((routes[p] < 0).any()),
            )
            for p, proxy in enumerate(self.usecase.proxies)
        }

    def serve(
        self, namespace: str, service: str, path: str, query: dict[str, str]
    ) -> tuple[int, str, float]:
        """The proxies' probe answers and the Prometheus API, from the last step's measurement."""
        name = service.split(":", 1)[0]
        if path.rstrip("/") == "api/v1/query":
            return self._prometheus(query.get("query", ""))
        known = self._proxies.get((namespace, name))
        if known is None:
            return 503, f'{{"error": "no endpoints for {service}"}}', 0.0
        latency, rate, broken = known
        body = f'{{"ok": {str(not broken).lower()}, "rate": {rate!r}}}'
        return 200, body, 0.0 if broken else latency

    def _prometheus(self, query: str) -> tuple[int, str, float]:
        labels = dict(_LABEL.findall(query))
        metric = query.split("{", 1)[0].strip()
        known = self._proxies.get((labels.get("namespace", ""), labels.get("proxy", "")))
        lat_metric = self.cmap.latency.query.split("{", 1)[0].strip()
        result = []
        if known is not None:
            value = known[0] if metric == lat_metric else known[1]
            result = [{"metric": labels, "value": [0, repr(value)]}]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return 200, json.dumps(body), 0.0


def _same_placement(a: EnvState, b: EnvState) -> bool:
    return bool(jnp.array_equal(a.ready, b.ready) & jnp.array_equal(a.routes, b.routes))


def _pod_metrics(namespace: str, name: str, labels: dict, nanocores: int) -> dict:
    """A PodMetrics as metrics-server serves it (it copies the pod's labels)."""
    return {
        "apiVersion": "metrics.k8s.io/v1beta1",
        "kind": "PodMetrics",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "timestamp": "1970-01-01T00:00:00Z",
        "window": "30s",
        "containers": [
            {
                "name": labels.get(objects.FUNCTION, "nf"),
                "usage": {"cpu": f"{nanocores}n", "memory": "0"},
            }
        ],
    }


class TwinClock:
    """Lock-step cluster time for tests: each env step is exactly one twin step, with the
    simulator's keys."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin

    def reset(self, key: jax.Array) -> None:
        self.twin.reset(key)

    def step(self, key: jax.Array, seconds: float) -> None:
        del seconds
        self.twin.advance(key)


class TwinPool:
    """Free-running twins for dry runs, one per cluster set: a set is the map's namespaces with
    a common suffix (`hmk8s-0-e3`, `hmk8s-1-e3`, ... for env 3 of a multi-env run)."""

    def __init__(
        self,
        clusters: Clusters,
        usecase: UseCase,
        cmap: ClusterMap,
        env_cfg: Mapping[str, Any] | None = None,
    ) -> None:
        self.clusters, self.usecase, self.cmap, self.env_cfg = clusters, usecase, cmap, env_cfg
        self.base = [c.namespace for c in cmap.clusters]
        self.twins: dict[str, Twin] = {}
        clusters.serve_with(self.serve)

    def _discover(self) -> None:
        selector = objects.run_selector(None)
        seen = {
            o["metadata"]["namespace"] for o in self.clusters.objects(DEPLOYMENTS, None, selector)
        }
        seen |= {
            o["metadata"]["namespace"] for o in self.clusters.objects(CONFIGMAPS, None, selector)
        }
        for ns in seen:
            suffix = ns.removeprefix(self.base[0]) if ns.startswith(self.base[0]) else None
            if suffix is not None and suffix not in self.twins:
                namespaces = [b + suffix for b in self.base]
                self.twins[suffix] = Twin(
                    self.clusters, self.usecase, self.cmap, self.env_cfg, namespaces, serve=False
                )
                log.info("twin playing %s", namespaces)

    def serve(
        self, namespace: str, service: str, path: str, query: dict[str, str]
    ) -> tuple[int, str, float]:
        labels = dict(_LABEL.findall(query.get("query", "")))
        target = labels.get("namespace", namespace)
        for twin in self.twins.values():
            if target in twin.namespaces:
                return twin.serve(namespace, service, path, query)
        return 503, f'{{"error": "no endpoints for {service}"}}', 0.0

    def run(self, step_seconds: float, stop: threading.Event, seed: int = 0) -> None:
        """One step of every twin per `step_seconds` of wall time, until `stop` is set."""
        key = jax.random.PRNGKey(seed)
        while not stop.wait(step_seconds):
            self._discover()
            for twin in list(self.twins.values()):
                key, k_step = jax.random.split(key)
                twin.advance(k_step)
