"""K clusters as K namespaces of one real API server, for the twin to play (tests, dry runs).

What `EmulatedClusters` offers the twin, over a real server's REST API with admin credentials:
list objects, write Deployment `.status` (as the Deployment controller would), write and remove
PodMetrics (as metrics-server would; `metrics.k8s.io` pods are a CRD there), and answer
Prometheus queries (`/api/v1/query` on a loopback HTTP port, as Prometheus would; the backend
reads it through `latency.prometheus_url`). A real server cannot proxy to loopback, so the
proxies' probe path is the emulator's alone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from hmk8s.k8s.client import new_api_client

if TYPE_CHECKING:
    from hmk8s.k8s.emulated.emulator import ServiceHandler

log = logging.getLogger(__name__)
DEPLOYMENTS, METRICS = "apps/v1/deployments", "metrics.k8s.io/v1beta1/pods"
TIMEOUT_S = 10.0
SHUTDOWN_POLL_S = 0.05  # how soon `close` stops the Prometheus port (the default waits 0.5 s)


def resource_path(
    resource: str, namespace: str | None, name: str | None = None, sub: str | None = None
) -> str:
    """The REST path of `group/version/plural` (or `version/plural` for the core group)."""
    *group, version, plural = resource.split("/")
    root = f"/apis/{group[0]}/{version}" if group else f"/api/{version}"
    path = root + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


#: What hmk8s writes into a namespace (the kinds `delete_objects` removes).
WORKLOADS = ("apps/v1/deployments", "v1/services", "v1/configmaps")


class ApiClusters:
    """Namespaces `namespaces[k]` of the server play cluster k; contexts `contexts[k]` of the
    kubeconfig `kubeconfig()` writes reach them with the admin's credentials."""

    def __init__(
        self,
        admin_kubeconfig: Path,
        admin_context: str,
        namespaces: list[str],
        contexts: list[str] | None = None,
    ) -> None:
        self.admin_kubeconfig, self.admin_context = Path(admin_kubeconfig), admin_context
        self.namespaces = list(namespaces)
        self.contexts = contexts or [f"hmk8s-{k}" for k in range(len(namespaces))]
        self.api_client = new_api_client(self.admin_kubeconfig, admin_context)
        self._http: ThreadingHTTPServer | None = None
        self._handler: ServiceHandler | None = None
        self._pod_metrics: set[tuple[str, str]] = set()

    def __enter__(self) -> ApiClusters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self.api_client.close()

    # -- REST -----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict]:
        """One call; (HTTP status, decoded JSON body). Errors are answers, not exceptions."""
        request = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=TIMEOUT_S)
        data = response.read()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data[:200].decode(errors="replace")}
        return response.status, decoded

    def _ok(self, what: str, answer: tuple[int, dict], allowed: tuple[int, ...] = ()) -> dict:
        status, body = answer
        if not (200 <= status < 300 or status in allowed):
            raise RuntimeError(f"{what}: HTTP {status} {body.get('message', '')}")
        return body

    def objects(self, resource: str, namespace: str | None = None, selector: str = "") -> list:
        """The items of a list call, each with the `kind` and `apiVersion` lists leave out."""
        path = resource_path(resource, namespace)
        query = [("labelSelector", selector)] if selector else []
        found = self._ok(f"list {path}", self.request("GET", path, query=query))
        kind = found["kind"].removesuffix("List")
        return [
            {"kind": kind, "apiVersion": found["apiVersion"], **item}
            for item in found["items"] or []
        ]

    def create_namespaces(self, names: list[str] | None = None) -> None:
        """Create `names` (default: the clusters' namespaces); existing ones are kept."""
        for ns in self.namespaces if names is None else names:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            self._ok(
                f"create namespace {ns}", self.request("POST", "/api/v1/namespaces", body), (409,)
            )

    def delete_objects(self) -> None:
        """Delete every Deployment, Service and ConfigMap of the clusters' namespaces. A bare
        API server runs no namespace controller, so deleting a namespace would leave them
        listed; what a controller left in place (it never deletes) goes here too."""
        for ns in self.namespaces:
            for resource in WORKLOADS:  # one by one: Services have no delete-collection
                for item in self.objects(resource, ns):
                    path = resource_path(resource, ns, item["metadata"]["name"])
                    self._ok(f"delete {path}", self.request("DELETE", path), (404,))

    # -- the twin's writes ----------------------------------------------------------------------

    def write_status(self, namespace: str, name: str, status: dict) -> None:
        """A Deployment's `.status` through its status subresource (gone ones are skipped)."""
        path = resource_path(DEPLOYMENTS, namespace, name, "status")
        answer = self.request(
            "PATCH", path, {"status": status}, content_type="application/merge-patch+json"
        )
        self._ok(f"status of {namespace}/{name}", answer, (404,))

    def put_pod_metrics(self, namespace: str, name: str, body: dict) -> None:
        """Create or replace (merge) one PodMetrics: one request once it is known to exist."""
        key, what = (namespace, name), f"PodMetrics {namespace}/{name}"
        path = resource_path(METRICS, namespace, name)
        merge = "application/merge-patch+json"
        if key in self._pod_metrics:
            status, _ = self.request("PATCH", path, body, content_type=merge)
            if status != 404:
                self._ok(what, (status, {}))
                return
        status, _ = self.request("POST", resource_path(METRICS, namespace), body)
        if status == 409:
            status, _ = self.request("PATCH", path, body, content_type=merge)
        self._ok(what, (status, {}))
        self._pod_metrics.add(key)

    def remove_pod_metrics(self, namespace: str, name: str) -> None:
        self._pod_metrics.discard((namespace, name))
        answer = self.request("DELETE", resource_path(METRICS, namespace, name))
        self._ok(f"delete PodMetrics {namespace}/{name}", answer, (404,))

    def serve_with(self, handler: ServiceHandler) -> None:
        """Answer Prometheus queries at `prometheus_url` with `handler`."""
        self._handler = handler
        self._serve()

    def _serve(self) -> ThreadingHTTPServer:
        if self._http is None:
            self._http = ThreadingHTTPServer(("127.0.0.1", 0), _PrometheusHandler)
            self._http.daemon_threads = True
            self._http.answer = self._answer  # type: ignore[attr-defined]
            thread = threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": SHUTDOWN_POLL_S},
                name="prometheus",
            )
            thread.daemon = True
            thread.start()
        return self._http

    def _answer(self, path: str, query: dict[str, str]) -> tuple[int, str, float]:
        if self._handler is None:
            return 503, '{"error": "nothing serves yet"}', 0.0
        return self._handler("", "prometheus", path, query)

    @property
    def prometheus_url(self) -> str:
        """Where the Prometheus API is answered (503 until a twin serves it)."""
        host, port = self._serve().server_address[:2]
        return f"http://{host}:{port}"

    # -- kubeconfig and cluster map -------------------------------------------------------------

    def kubeconfig(self, path: str | Path) -> Path:
        """A kubeconfig with one context per cluster (admin credentials, its namespace)."""
        path = Path(path)
        admin = yaml.safe_load(self.admin_kubeconfig.read_text())
        ctx = next(c for c in admin["contexts"] if c["name"] == self.admin_context)["context"]
        cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
        user = next(u for u in admin["users"] if u["name"] == ctx["user"])
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [user],
            "contexts": [
                {
                    "name": name,
                    "context": {"cluster": cluster["name"], "user": user["name"], "namespace": ns},
                }
                for name, ns in zip(self.contexts, self.namespaces, strict=True)
            ],
            "current-context": self.contexts[0],
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def cluster_map_data(self, kubeconfig: str | Path) -> dict[str, Any]:
        """The `kubeconfig`, `clusters` and `latency` entries of a cluster map for these."""
        return {
            "kubeconfig": str(kubeconfig),
            "clusters": [
                {"context": c, "namespace": n}
                for c, n in zip(self.contexts, self.namespaces, strict=True)
            ],
            "latency": {"source": "prometheus", "prometheus_url": self.prometheus_url},
        }


class _PrometheusHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        status, body, hold = self.server.answer(  # type: ignore[attr-defined]
            url.path.lstrip("/"), dict(parse_qsl(url.query))
        )
        if hold:
            time.sleep(hold)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)
