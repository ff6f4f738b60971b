"""One cluster's API through the official client: retried calls, create-or-patch, pre-flight checks.

`kubernetes` is imported inside the functions of this package only, never at module level, so
the training core (and even `import hmk8s.k8s.env`) works on hosts without the client.

The client is newer than some servers it talks to: bodies that are not used (deletes) are not
parsed, and an answer it cannot parse is an API error like any other, not a crash. Tokens
rotate (projected ServiceAccount tokens, `kubectl create token`), so a 401 re-reads the
kubeconfig once before it counts as an error.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from hmk8s.k8s.config import ClusterMap, ClusterRef
from hmk8s.k8s.retry import ApiCallError, Retrier

log = logging.getLogger(__name__)
T = TypeVar("T")
METRICS_GROUP, METRICS_VERSION = "metrics.k8s.io", "v1beta1"


class ClusterAccessError(RuntimeError):
    """The backend cannot use a cluster at all (before training, or when the API stays down
    mid-run); ``fatal``: retrying the env does not help, so its worker retires at once."""

    fatal = True


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
    load_credentials(client_config, path, context)
    from kubernetes import client

    return client.ApiClient(client_config)


def load_credentials(client_config: Any, path: Path, context: str) -> None:
    """(Re-)read one context of a kubeconfig into a client configuration, token files too."""
    from kubernetes import config as kconfig

    kconfig.load_kube_config(
        config_file=str(path),
        context=context,
        client_configuration=client_config,
        persist_config=False,
    )


def _configuration() -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.retries = False
    return cfg


class ClusterClient:
    """The namespace of one cluster, reached through one context.

    With `kubeconfig` given, a 401 re-reads that file's context once (a rotated token) before
    it fails with `ClusterAccessError`.
    """

    def __init__(
        self,
        api_client: Any,
        ref: ClusterRef,
        cmap: ClusterMap,
        *,
        kubeconfig: Path | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.kubeconfig = kubeconfig
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

    @property
    def where(self) -> str:
        return f"context {self.ref.context!r}, namespace {self.namespace!r}"

    def _call(self, op: str, api: str, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self._apis[api], method)
        return self._send(op, fn, *args, _request_timeout=self.timeout, **kwargs)

    def _send(self, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` under the retry policy, with one credential re-read on a 401."""
        label = f"{self.ref.context}/{self.namespace} {op}"
        reread = False
        while True:
            try:
                return self.retrier.call(label, fn, *args, **kwargs)
            except Exception as exc:
                if _status(exc) == 401:
                    if self.kubeconfig is not None and not reread:
                        log.info("%s: HTTP 401, re-reading %s", label, self.kubeconfig)
                        load_credentials(
                            self.api_client.configuration, self.kubeconfig, self.ref.context
                        )
                        reread = True
                        continue
                    source = f" after re-reading {self.kubeconfig}" if reread else ""
                    raise ClusterAccessError(
                        f"{self.where}: credentials rejected (HTTP 401){source}; "
                        "renew the token (docs/kubernetes.md)"
                    ) from None
                if unparsable(exc, getattr(fn, "__name__", "")):
                    raise ApiCallError(label, None, f"unparsable answer ({exc!r:.200})") from exc
                raise

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
        """Create or patch `body`; on 409 re-read the object and re-apply (bounded). A missing
        namespace ends the run (`ClusterAccessError`): nothing could be created there. With
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
                elif (gone := missing_namespace(exc)) is not None:
                    raise ClusterAccessError(
                        f"{self.where}: namespace {gone!r} does not exist (any more); "
                        "the run cannot go on"
                    ) from None
                elif status == 404 and exists:
                    exists = False
                else:
                    raise
        raise ApiCallError(f"apply {kind} {name}", 409, "conflicts persisted")

    def delete(self, kind: str, name: str, dry_run: bool = False) -> bool:
        """Delete by name, not parsing the answer (servers answer an object or a `Status`);
        an absent object counts as deleted (False). With `dry_run` nothing is deleted."""
        k = KINDS[kind]
        try:
            answer = self._call(
                f"delete {kind} {name}",
                k.api,
                k.delete,
                name,
                self.namespace,
                _preload_content=False,
                **_dry_run(dry_run),
            )
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise
        discard(answer)
        return True

    def dry_run_create(self, body: dict) -> None:
        """Let the server check a create (authorisation, namespace, schema) without storing."""
        kind = body["kind"]
        k = KINDS[kind]
        answer = self._call(
            f"dry-run create {kind}",
            k.api,
            k.create,
            self.namespace,
            body,
            dry_run="All",
            _preload_content=False,
        )
        discard(answer)

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

        return self._send(f"GET {namespace}/{service}/{path}", get)

    def preflight(self, *, metrics: bool, writes: Sequence[dict] = ()) -> None:
        """Check, before training, that the run can work in this namespace: list every kind,
        dry-run create each of `writes` (one object per kind the run writes), read metrics."""
        from kubernetes.client.exceptions import ApiException

        where = self.where
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
        for body in writes:
            self._preflight_write(body)
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

    def _preflight_write(self, body: dict) -> None:
        from kubernetes.client.exceptions import ApiException

        kind = body["kind"]
        try:
            self.dry_run_create(body)
        except ApiException as exc:
            gone = missing_namespace(exc)
            if gone is not None:
                raise ClusterAccessError(
                    f"{self.where}: namespace {gone!r} does not exist; create it "
                    "(scripts/setup_clusters.py)"
                ) from None
            if exc.status == 409:  # the object exists: creating was allowed
                return
            if exc.status in (401, 403):
                raise ClusterAccessError(
                    f"{self.where}: not allowed to create {kind}s (HTTP {exc.status}); "
                    "apply deploy/rbac.yaml and use its ServiceAccount"
                ) from None
            raise ClusterAccessError(
                f"{self.where}: the server refuses a {kind} (HTTP {exc.status}: {_message(exc)})"
            ) from None
        except ApiCallError as exc:
            raise ClusterAccessError(f"{self.where}: API server failing ({exc})") from None


def discard(answer: Any) -> None:
    """Return an unread response's connection to the pool, its body unparsed."""
    answer.drain_conn()
    answer.release_conn()


def unparsable(exc: BaseException, method: str) -> bool:
    """An answer the client could not turn into its model (not a wrong argument of `method`)."""
    import pydantic

    if isinstance(exc, pydantic.ValidationError):
        return not (method and exc.title.endswith(method))
    return isinstance(exc, json.JSONDecodeError | UnicodeDecodeError)


def _body(exc: BaseException) -> dict:
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _message(exc: BaseException) -> str:
    return str(_body(exc).get("message") or getattr(exc, "reason", "") or exc)


def missing_namespace(exc: BaseException) -> str | None:
    """The namespace a 404 says is absent (writes into a missing namespace answer this way;
    lists there answer an empty list)."""
    if _status(exc) != 404:
        return None
    details = _body(exc).get("details") or {}
    return details.get("name") if details.get("kind") == "namespaces" else None


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


def connect(
    cmap: ClusterMap, *, check_metrics: bool = True, writes: Sequence[dict] = ()
) -> list[ClusterClient]:
    """One client per cluster of the map, each checked (`preflight`) before any object is
    written."""
    path = kubeconfig_path(cmap)
    clients = []
    api_clients: dict[str, Any] = {}
    for ref in cmap.clusters:
        if ref.context not in api_clients:
            api_clients[ref.context] = new_api_client(path, ref.context)
        client = ClusterClient(api_clients[ref.context], ref, cmap, kubeconfig=path)
        client.preflight(metrics=check_metrics, writes=writes)
        clients.append(client)
    return clients
