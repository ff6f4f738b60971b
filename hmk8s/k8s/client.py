"""One cluster's API through the official client: retried calls, create-or-patch, pre-flight checks.

`kubernetes` is imported inside the functions of this package only, never at module level, so
the training core (and even `import hmk8s.k8s.env`) works on hosts without the client.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hmk8s.k8s.config import ClusterMap, ClusterRef
from hmk8s.k8s.retry import ApiCallError, Retrier

log = logging.getLogger(__name__)
METRICS_GROUP, METRICS_VERSION = "metrics.k8s.io", "v1beta1"


class ClusterAccessError(RuntimeError):
    """The backend cannot use a cluster at all: raised before training starts."""


@dataclass(frozen=True)
class _Kind:
    create: str
    patch: str
    read: str
    delete: str
    list: str
    api: str


KINDS = {
    "Deployment": _Kind(
        "create_namespaced_deployment",
        "patch_namespaced_deployment",
        "read_namespaced_deployment",
        "delete_namespaced_deployment",
        "list_namespaced_deployment",
        "apps",
    ),
    "Service": _Kind(
        "create_namespaced_service",
        "patch_namespaced_service",
        "read_namespaced_service",
        "delete_namespaced_service",
        "list_namespaced_service",
        "core",
    ),
    "ConfigMap": _Kind(
        "create_namespaced_config_map",
        "patch_namespaced_config_map",
        "read_namespaced_config_map",
        "delete_namespaced_config_map",
        "list_namespaced_config_map",
        "core",
    ),
}


def api_errors() -> tuple[type[BaseException], ...]:
    """What a failed API call can raise once retries are spent: reported, never fatal."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return ApiCallError, ApiException, urllib3.exceptions.HTTPError, OSError


def kubeconfig_path(cmap: ClusterMap) -> Path:
    """The kubeconfig the map names, else $KUBECONFIG (first entry), else ~/.kube/config."""
    import os

    if cmap.kubeconfig:
        return Path(cmap.kubeconfig).expanduser()
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return Path(env).expanduser() if env else Path.home() / ".kube" / "config"


def new_api_client(path: Path, context: str) -> Any:
    """An ApiClient for one context; unreadable files and unknown contexts fail clearly."""
    from kubernetes import config as kconfig

    try:
        path.read_bytes()
    except OSError as err:
        raise ClusterAccessError(f"kubeconfig {path}: cannot read ({err.strerror})") from None
    try:
        contexts, _ = kconfig.list_kube_config_contexts(config_file=str(path))
    except Exception as err:
        raise ClusterAccessError(f"kubeconfig {path}: not a usable kubeconfig ({err})") from None
    names = [c["name"] for c in contexts or []]
    if context not in names:
        raise ClusterAccessError(
            f"kubeconfig {path}: no context {context!r}; it has {names or 'none'}"
        )
    client_config = _configuration()
    kconfig.load_kube_config(
        config_file=str(path),
        context=context,
        client_configuration=client_config,
        persist_config=False,
    )
    from kubernetes import client

    return client.ApiClient(client_config)


def _configuration() -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.retries = False
    return cfg


class ClusterClient:
    """The namespace of one cluster, reached through one context."""

    def __init__(
        self,
        api_client: Any,
        ref: ClusterRef,
        cmap: ClusterMap,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.ref = ref
        self.namespace = ref.namespace
        self.timeout = cmap.api.timeout_s
        self.max_conflicts = cmap.api.max_conflicts
        self.retrier = Retrier(cmap.api, rng or random.Random(), sleep)
        self._apis = {
            "apps": client.AppsV1Api(api_client),
            "core": client.CoreV1Api(api_client),
            "custom": client.CustomObjectsApi(api_client),
        }

    def _call(self, op: str, api: str, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self._apis[api], method)
        return self.retrier.call(
            f"{self.ref.context}/{self.namespace} {op}",
            fn,
            *args,
            _request_timeout=self.timeout,
            **kwargs,
        )

    def list(self, kind: str, label_selector: str) -> list[Any]:
        k = KINDS[kind]
        result = self._call(
            f"list {kind}", k.api, k.list, self.namespace, label_selector=label_selector
        )
        return list(result.items)

    def read(self, kind: str, name: str) -> Any | None:
        k = KINDS[kind]
        try:
            return self._call(f"read {kind} {name}", k.api, k.read, name, self.namespace)
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise

    def apply(self, body: dict, exists: bool | None = None, dry_run: bool = False) -> None:
        """Create or patch `body`; on 409 re-read the object and re-apply (bounded). With
        `dry_run` the server checks the call (`dryRun=All`) and stores nothing."""
        kind, name = body["kind"], body["metadata"]["name"]
        k = KINDS[kind]
        extra = _dry_run(dry_run)
        for _ in range(self.max_conflicts):
            if exists is None:
                exists = self.read(kind, name) is not None
            try:
                if exists:
                    self._call(
                        f"patch {kind} {name}", k.api, k.patch, name, self.namespace, body, **extra
                    )
                else:
                    self._call(
                        f"create {kind} {name}", k.api, k.create, self.namespace, body, **extra
                    )
                return
            except Exception as exc:
                status = _status(exc)
                if status == 409:
                    self.retrier.stats.conflicts += 1
                    exists = None
                elif status == 404 and exists:
                    exists = False
                else:
                    raise
        raise ApiCallError(f"apply {kind} {name}", 409, "conflicts persisted")

    def delete(self, kind: str, name: str, dry_run: bool = False) -> bool:
        """Delete by name; an absent object counts as deleted (False)."""
        k = KINDS[kind]
        try:
            self._call(
                f"delete {kind} {name}", k.api, k.delete, name, self.namespace, **_dry_run(dry_run)
            )
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    def pod_metrics(self, label_selector: str) -> list[dict]:
        result = self._call(
            "list PodMetrics",
            "custom",
            "list_namespaced_custom_object",
            METRICS_GROUP,
            METRICS_VERSION,
            self.namespace,
            "pods",
            label_selector=label_selector,
        )
        return list(result.get("items", []))

    def service_get(
        self, namespace: str, service: str, path: str, query: list[tuple[str, str]] | None = None
    ) -> tuple[int, str]:
        """GET through the API server's service proxy (`service` is `name:port`)."""
        from kubernetes.client.exceptions import ApiException

        resource = (
            f"/api/v1/namespaces/{quote(namespace)}/services/{quote(service)}/proxy/"
            f"{quote(path.lstrip('/'), safe='/')}"
        )

        def get() -> tuple[int, str]:
            request = self.api_client.param_serialize(
                method="GET",
                resource_path=resource,
                query_params=query or [],
                header_params={"Accept": "*/*"},
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(*request, _request_timeout=self.timeout)
            response.read()
            if not 200 <= response.status < 300:
                raise ApiException(http_resp=response)
            return response.status, response.data.decode()

        return self.retrier.call(f"GET {namespace}/{service}/{path}", get)

    def preflight(self, *, metrics: bool) -> None:
        """Check, before training, that the run can work in this namespace."""
        from kubernetes.client.exceptions import ApiException

        where = f"context {self.ref.context!r}, namespace {self.namespace!r}"
        try:
            for kind in KINDS:
                self.list(kind, "app.kubernetes.io/managed-by=hmk8s")
        except ApiException as exc:
            if exc.status in (401, 403):
                raise ClusterAccessError(
                    f"{where}: not allowed to list {kind}s (HTTP {exc.status}); "
                    "apply deploy/rbac.yaml and use its ServiceAccount"
                ) from None
            raise ClusterAccessError(f"{where}: {kind} API unusable (HTTP {exc.status})") from None
        except (ApiCallError, OSError) as exc:
            raise ClusterAccessError(
                f"{where}: API server unreachable or failing ({exc})"
            ) from None
        if metrics:
            try:
                self.pod_metrics("app.kubernetes.io/managed-by=hmk8s")
            except ApiException as exc:
                if exc.status == 404:
                    raise ClusterAccessError(
                        f"{where}: the metrics.k8s.io API is absent; install metrics-server "
                        "(docs/kubernetes.md)"
                    ) from None
                if exc.status in (401, 403):
                    raise ClusterAccessError(
                        f"{where}: not allowed to list pods.metrics.k8s.io (HTTP {exc.status})"
                    ) from None
                raise ClusterAccessError(
                    f"{where}: metrics.k8s.io unusable (HTTP {exc.status})"
                ) from None
            except ApiCallError as exc:
                raise ClusterAccessError(
                    f"{where}: metrics.k8s.io does not answer ({exc}); is metrics-server running?"
                ) from None


def _dry_run(dry_run: bool) -> dict[str, str]:
    """The client's keyword for `?dryRun=All`, or nothing."""
    return {"dry_run": "All"} if dry_run else {}


def _status(exc: BaseException) -> int | None:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status
    if isinstance(exc, ApiCallError):
        return exc.status
    return None


def connect(cmap: ClusterMap, *, check_metrics: bool = True) -> list[ClusterClient]:
    """One client per cluster of the map, each checked before any object is written."""
    path = kubeconfig_path(cmap)
    clients = []
    api_clients: dict[str, Any] = {}
    for ref in cmap.clusters:
        if ref.context not in api_clients:
            api_clients[ref.context] = new_api_client(path, ref.context)
        client = ClusterClient(api_clients[ref.context], ref, cmap)
        client.preflight(metrics=check_metrics)
        clients.append(client)
    return clients
