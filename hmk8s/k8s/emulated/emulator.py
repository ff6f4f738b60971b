"""A Kubernetes API on loopback for tests and dry runs: kmock's emulator, made faithful enough.

`kmock.KubernetesEmulator` serves the real REST API to the real client from memory. This module
adds what the backend relies on and kmock leaves out (label selectors on lists and
deletecollection, server-set metadata, dry-run creates, discovery of the resources used, 403
for namespaces without permission) and what the robustness tests need: a per-request API
latency and a fault rate (500, 429 with Retry-After, 409, a hold past the client's timeout).
`EmulatedClusters` runs it on a background thread and writes a kubeconfig with one context per
cluster. It is not a whole API server (no OpenAPI, partial discovery; kubectl mostly fails on
it): for that, `scripts/emulate.py` starts a real kube-apiserver where one is available.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import yaml

T = TypeVar("T")
FAULT_KINDS = ("500", "429", "409", "timeout")
DEPLOYMENTS = "apps/v1/deployments"
RESOURCES = {
    DEPLOYMENTS: ("Deployment", {"status"}),
    "v1/services": ("Service", set()),
    "v1/configmaps": ("ConfigMap", set()),
}
METRICS_RESOURCE = "metrics.k8s.io/v1beta1/pods"
REQUEST_LOG = 5000
# (namespace, "name:port", path, query) -> (HTTP status, body, seconds to hold the answer)
ServiceHandler = Callable[[str, str, str, dict[str, str]], tuple[int, str, float]]


def match_labels(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`), comma-joined."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _status(code: int, reason: str, message: str, headers: dict | None = None) -> Any:
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return aiohttp.web.json_response(body, status=code, headers=headers)


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """The API server every emulated cluster (one namespace each) talks to."""

    api_latency_s: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: str = "1"
    timeout_hold_s: float = 2.0
    forbidden_namespaces: frozenset[str] = frozenset()
    seed: int = 0
    service_handler: ServiceHandler | None = None
    faults: Counter = attrs.field(factory=Counter)
    _rng: random.Random = attrs.field(init=False)
    _versions: itertools.count = attrs.field(factory=lambda: itertools.count(1), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rng = random.Random(self.seed)
        for key, (kind, subresources) in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=kind,
                namespaced=True,
                subresources=subresources,
                verbs={"get", "list", "create", "patch", "delete", "deletecollection"},
            )

    def serve_metrics(self, enabled: bool) -> None:
        """Declare (or withdraw) the metrics.k8s.io API, as installing metrics-server does."""
        if enabled:
            self.resources[METRICS_RESOURCE] = kmock.ResourceInfo(
                kind="PodMetrics", namespaced=True, verbs={"get", "list"}
            )
        elif METRICS_RESOURCE in self.resources:
            del self.resources[METRICS_RESOURCE]

    def _metrics_served(self) -> bool:
        return METRICS_RESOURCE in self.resources

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Serve object requests here; only discovery goes through kmock's generic matching,
        whose cost grows with the number of requests served so far."""
        self._trim_request_log()
        if self.api_latency_s:
            await asyncio.sleep(self.api_latency_s)
        if request.resource is None or request.resource.plural is None:
            return await super()._handle(request)
        if request.namespace in self.forbidden_namespaces:
            return _status(403, "Forbidden", f"namespace {request.namespace!r} is forbidden")
        if request.resource.group == "metrics.k8s.io" and not self._metrics_served():
            return _status(404, "NotFound", "the server could not find the requested resource")
        fault = self._draw_fault(request)
        if fault is not None:
            return await fault
        if (request.subresource or "").startswith(
            "proxy"
        ) and request.resource.plural == "services":
            return await self._serve_service_proxy(request)
        if request.resource not in self.resources:
            return _status(404, "NotFound", "the server could not find the requested resource")
        if request.method == kmock.method.GET and request.name is None:
            return await self._list(request)
        if request.method == kmock.method.DELETE and request.name is None:
            return await self._delete_collection(request)
        if request.params.get("dryRun") == "All":
            async with self._lock:
                return self._dry_run(request)
        handler = {
            kmock.method.GET: self._fetch,
            kmock.method.POST: self._create,
            kmock.method.PATCH: self._update,
            kmock.method.DELETE: self._delete,
        }.get(request.method)
        if handler is None:
            return _status(405, "MethodNotAllowed", f"{request.method} is not supported here")
        async with self._lock:
            return handler(request)

    def _trim_request_log(self) -> None:
        """kmock keeps every request for assertions; a long dry run only needs recent ones."""
        if len(self._requests) > 2 * REQUEST_LOG:
            del self._requests[:-REQUEST_LOG]

    def _draw_fault(self, request: kmock.Request) -> Awaitable[Any] | None:
        if not self.fault_rate or self._rng.random() >= self.fault_rate:
            return None
        mutating = request.method in (kmock.method.POST, kmock.method.PATCH)
        kinds = [k for k in self.fault_kinds if k != "409" or mutating]
        if not kinds:
            return None
        kind = self._rng.choice(kinds)
        self.faults[kind] += 1
        return self._fault(kind)

    async def _fault(self, kind: str) -> Any:
        if kind == "500":
            return _status(500, "InternalError", "injected fault")
        if kind == "429":
            return _status(
                429, "TooManyRequests", "injected throttling", {"Retry-After": self.retry_after}
            )
        if kind == "409":
            return _status(409, "Conflict", "injected conflict: the object has been modified")
        await asyncio.sleep(self.timeout_hold_s)
        return _status(504, "Timeout", "injected timeout")

    def _key(self, request: kmock.Request, name: str | None = None) -> tuple:
        return (request.resource, request.namespace, name or request.name)

    def _live_object(self, key: tuple) -> Any | None:
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else obj

    def _dry_run(self, request: kmock.Request) -> Any:
        """`?dryRun=All`: answer as the write would (404 or 409 where it would fail), store
        nothing and bump no resourceVersion."""
        if request.method == kmock.method.GET:
            return self._fetch(request)
        if request.method == kmock.method.POST:
            body = request.data if isinstance(request.data, dict) else {}
            name = body.get("metadata", {}).get("name")
            if not name:
                return _status(422, "Invalid", "metadata.name is required")
            if self._live_object(self._key(request, name)) is not None:
                return _status(
                    409, "AlreadyExists", f"{request.resource.plural} {name!r} already exists"
                )
            return aiohttp.web.json_response(body, status=201)
        obj = self._live_object(self._key(request))
        if obj is None:
            return _status(404, "NotFound", f"{request.resource.plural} {request.name!r} not found")
        return aiohttp.web.json_response(obj.raw)

    def _fetch(self, request: kmock.Request) -> Any:
        obj = self._live_object(self._key(request))
        if obj is None:
            return _status(404, "NotFound", f"{request.resource.plural} {request.name!r} not found")
        return aiohttp.web.json_response(obj.raw)

    def _create(self, request: kmock.Request) -> Any:
        body = request.data if isinstance(request.data, dict) else None
        name = (body or {}).get("metadata", {}).get("name")
        if not name:
            return _status(422, "Invalid", "metadata.name is required")
        key = self._key(request, name)
        if self._live_object(key) is not None:
            return _status(
                409, "AlreadyExists", f"{request.resource.plural} {name!r} already exists"
            )
        if request.params.get("dryRun") == "All":  # checked, not stored
            return aiohttp.web.json_response(body, status=201)
        meta = body["metadata"]
        meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(next(self._versions))
        meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        meta["generation"] = 1
        self.objects[key] = body
        return aiohttp.web.json_response(body, status=201)

    def _update(self, request: kmock.Request) -> Any:
        obj = self._live_object(self._key(request))
        if obj is None:
            return _status(404, "NotFound", f"{request.resource.plural} {request.name!r} not found")
        if not isinstance(request.data, dict | list):
            return _status(415, "UnsupportedMediaType", "the body must be a JSON patch")
        obj.patch(request.data)
        obj.last["metadata"] = {**obj.raw["metadata"], "resourceVersion": str(next(self._versions))}
        del obj.history[:-1]  # the current version is all a client can see; keep memory bounded
        return aiohttp.web.json_response(obj.raw)

    def _delete(self, request: kmock.Request) -> Any:
        obj = self._live_object(self._key(request))
        if obj is None:
            return _status(404, "NotFound", f"{request.resource.plural} {request.name!r} not found")
        raw = obj.raw
        obj.delete()
        return aiohttp.web.json_response(raw)

    def _live(self, request: kmock.Request) -> list[tuple[tuple, dict]]:
        selector = request.params.get("labelSelector", "")
        found = []
        for key, obj in self.objects.items():
            resource, namespace, _ = key
            if obj.deleted or resource != request.resource:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            raw = obj.raw
            if match_labels(raw.get("metadata", {}).get("labels") or {}, selector):
                found.append((key, raw))
        return found

    async def _list(self, request: kmock.Request) -> Any:
        async with self._lock:
            items = [raw for _, raw in self._live(request)]
        return aiohttp.web.json_response(
            {"metadata": {"resourceVersion": str(next(self._versions))}, "items": items}
        )

    async def _delete_collection(self, request: kmock.Request) -> Any:
        async with self._lock:
            found = self._live(request)
            for key, _ in found:
                self.objects[key].delete()
        return aiohttp.web.json_response({"metadata": {}, "items": [raw for _, raw in found]})

    async def _serve_service_proxy(self, request: kmock.Request) -> Any:
        path = request.subresource.removeprefix("proxy").lstrip("/")
        if self.service_handler is None:
            return _status(503, "ServiceUnavailable", f"no endpoints for {request.name}")
        status, body, hold = self.service_handler(
            request.namespace or "", request.name or "", path, dict(request.params)
        )
        if hold:
            await asyncio.sleep(hold)
        return aiohttp.web.Response(status=status, text=body, content_type="application/json")

    async def put(self, resource: str, namespace: str, name: str, body: dict) -> None:
        """Replace an object in place (the twin's writes, no fault or latency applied)."""
        async with self._lock:
            self.objects[resource, namespace, name] = body

    async def patch_live(self, resource: str, namespace: str, name: str, patch: dict) -> bool:
        async with self._lock:
            key = (kmock.resource(resource), namespace, name)
            if key not in self.objects or self.objects[key].deleted:
                return False
            self.objects[key].patch(patch)
            del self.objects[key].history[:-1]
            return True

    async def remove(self, resource: str, namespace: str, name: str) -> None:
        async with self._lock:
            key = (kmock.resource(resource), namespace, name)
            if key in self.objects:
                del self.objects[key]

    async def snapshot(
        self, resource: str, namespace: str | None = None, selector: str = ""
    ) -> list[dict]:
        """Deep copies of the live objects of one resource, filtered like a list call."""
        target = kmock.resource(resource)
        async with self._lock:
            out = []
            for (res, ns, _), obj in self.objects.items():
                if obj.deleted or res != target or (namespace is not None and ns != namespace):
                    continue
                raw = obj.raw
                if match_labels(raw.get("metadata", {}).get("labels") or {}, selector):
                    out.append(json.loads(json.dumps(raw)))
        return out


class EmulatedClusters:
    """K emulated clusters (K namespaces of one loopback API server) on a background thread.

    Use as a context manager; `kubeconfig()` writes a kubeconfig with contexts
    `<prefix>0 … <prefix>K-1`, and `cluster_map_data()` the matching cluster-map entries.
    """

    def __init__(
        self,
        clusters: int = 3,
        *,
        port: int | None = None,
        namespace_prefix: str = "hmk8s-",
        context_prefix: str = "hmk8s-",
        api_latency_s: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        retry_after: str = "1",
        timeout_hold_s: float = 2.0,
        forbidden_namespaces: Sequence[str] = (),
        metrics_api: bool = True,
        seed: int = 0,
    ) -> None:
        unknown = set(fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.namespaces = [f"{namespace_prefix}{k}" for k in range(clusters)]
        self.contexts = [f"{context_prefix}{k}" for k in range(clusters)]
        self.emulator = ClusterEmulator(
            api_latency_s=api_latency_s,
            fault_rate=fault_rate,
            fault_kinds=tuple(fault_kinds),
            retry_after=retry_after,
            timeout_hold_s=timeout_hold_s,
            forbidden_namespaces=frozenset(forbidden_namespaces),
            seed=seed,
        )
        self.emulator.serve_metrics(metrics_api)
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.url = ""

    def __enter__(self) -> EmulatedClusters:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="k8s-emulator", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise RuntimeError(f"emulator failed to start: {self._error}") from self._error
        if not self.url:
            raise RuntimeError("emulator did not start within 30 s")

    def _serve(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            server = kmock.Server(self.emulator, host="127.0.0.1", port=self._port)
            async with self.emulator, server:
                self.url = str(server.url).rstrip("/")
                self._started.set()
                await self._stop.wait()

        try:
            self._loop.run_until_complete(main())
        except BaseException as err:
            self._error = err
            self._started.set()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None
        if not self._loop.is_running():
            self._loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the emulator's loop (the twin's and the tests' direct access)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def set_faults(self, rate: float, kinds: Sequence[str] | None = None) -> None:
        self.emulator.fault_rate = rate
        if kinds is not None:
            self.emulator.fault_kinds = tuple(kinds)

    def objects(self, resource: str, namespace: str | None = None, selector: str = "") -> list:
        return self.run(self.emulator.snapshot(resource, namespace, selector))

    # -- what the twin writes, as kubelet, the controllers and metrics-server would ------------

    def write_status(self, namespace: str, name: str, status: dict) -> None:
        """A Deployment's `.status` (gone Deployments are skipped)."""
        self.run(self.emulator.patch_live(DEPLOYMENTS, namespace, name, {"status": status}))

    def put_pod_metrics(self, namespace: str, name: str, body: dict) -> None:
        self.run(self.emulator.put(METRICS_RESOURCE, namespace, name, body))

    def remove_pod_metrics(self, namespace: str, name: str) -> None:
        self.run(self.emulator.remove(METRICS_RESOURCE, namespace, name))

    def serve_with(self, handler: ServiceHandler) -> None:
        """Answer service-proxy requests (probes, Prometheus queries) with `handler`."""
        self.emulator.service_handler = handler

    def kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig with one context per cluster, each defaulting to its namespace."""
        path = Path(path)
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "hmk8s-emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "hmk8s-emulator", "user": {"token": "emulated"}}],
            "contexts": [
                {
                    "name": ctx,
                    "context": {
                        "cluster": "hmk8s-emulator",
                        "user": "hmk8s-emulator",
                        "namespace": ns,
                    },
                }
                for ctx, ns in zip(self.contexts, self.namespaces, strict=True)
            ],
            "current-context": self.contexts[0],
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def cluster_map_data(self, kubeconfig: str | Path) -> dict[str, Any]:
        """The `kubeconfig`, `clusters` and `latency` entries of a cluster map for these
        clusters (latency from the twin's Prometheus answers; probes are held, so slow)."""
        return {
            "kubeconfig": str(kubeconfig),
            "clusters": [
                {"context": c, "namespace": n}
                for c, n in zip(self.contexts, self.namespaces, strict=True)
            ],
            "latency": {"source": "prometheus"},
        }
