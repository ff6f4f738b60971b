"""A real kube-apiserver (with etcd) on loopback for tests and dry runs, through the shared scripts.

`<repo>/../shared/kube-apiserver/start-test-cluster.sh DIR` starts kube-apiserver 1.20 and etcd
on 127.0.0.1 (a fresh port and admin token per start) and writes `DIR/kubeconfig` (context
`admin`, in `system:masters`); `stop-test-cluster.sh DIR` stops them. It is the real API
machinery (discovery, OpenAPI, RBAC, TokenRequest, dry-run, 404 for a missing namespace) without
a cluster behind it: no kubelet, controllers or metrics-server, so Deployment status and
PodMetrics are written by the twin, and `podmetrics-crd.yaml` registers `metrics.k8s.io` pods as
a custom resource (applied here when the script could not, which it does only with kubectl).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from hmk8s.k8s.client import METRICS_GROUP, METRICS_VERSION, new_api_client

SCRIPTS_ENV = "HMK8S_KUBE_APISERVER_DIR"
REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 300.0


class ApiServerUnavailable(RuntimeError):
    """No test API server can be started here (the shared scripts are absent)."""


@dataclass(frozen=True)
class ApiServer:
    """A running API server: an admin kubeconfig and its context."""

    kubeconfig: Path
    context: str = "admin"


def scripts_dir() -> Path:
    """`$HMK8S_KUBE_APISERVER_DIR`, else `../shared/kube-apiserver` beside the repository."""
    return Path(os.environ.get(SCRIPTS_ENV) or REPO.parent / "shared" / "kube-apiserver")


def available(scripts: Path | None = None) -> bool:
    return ((scripts or scripts_dir()) / "start-test-cluster.sh").is_file()


@contextmanager
def running(workdir: Path, scripts: Path | None = None) -> Iterator[ApiServer]:
    """Start a server whose files live in `workdir`; stop it (and drop etcd's data) on exit."""
    scripts = scripts or scripts_dir()
    try:
        yield start(workdir, scripts)
    finally:
        stop(workdir, scripts)


def start(workdir: Path, scripts: Path | None = None, extra_args: str = "") -> ApiServer:
    """Start kube-apiserver and etcd with their files in `workdir` (`extra_args` appended to the
    server's flags); the caller stops them with `stop`, also when this raises."""
    scripts = scripts or scripts_dir()
    if not available(scripts):
        raise ApiServerUnavailable(f"no kube-apiserver scripts in {scripts}")
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HMK8S_APISERVER_ARGS": extra_args} if extra_args else None
    done = subprocess.run(
        [str(scripts / "start-test-cluster.sh"), str(workdir)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kube-apiserver did not start: {done.stderr.strip()[-500:]}")
    server = ApiServer(verified_kubeconfig(workdir))
    ensure_pod_metrics_api(server, scripts / "podmetrics-crd.yaml")
    return server


def stop(workdir: Path, scripts: Path | None = None) -> None:
    """Stop what `start` started in `workdir` and drop etcd's data."""
    scripts = scripts or scripts_dir()
    subprocess.run(
        [str(scripts / "stop-test-cluster.sh"), str(workdir)],
        capture_output=True,
        timeout=60,
        check=False,
    )


def verified_kubeconfig(workdir: Path) -> Path:
    """The script's kubeconfig, verifying the server's certificate (its self-signed CA is in
    `certs/apiserver.crt`) instead of skipping TLS verification."""
    doc = yaml.safe_load((workdir / "kubeconfig").read_text())
    for entry in doc["clusters"]:
        entry["cluster"].pop("insecure-skip-tls-verify", None)
        entry["cluster"]["certificate-authority"] = str(workdir / "certs" / "apiserver.crt")
    path = workdir / "verified.kubeconfig"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def ensure_pod_metrics_api(server: ApiServer, crd: Path, timeout_s: float = 30.0) -> None:
    """Serve `metrics.k8s.io/v1beta1` pods: register the CRD if the group is not served yet,
    then wait until discovery lists it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api_client = new_api_client(server.kubeconfig, server.context)
    with api_client:
        if _served(api_client):
            return
        try:
            client.ApiextensionsV1Api(api_client).create_custom_resource_definition(
                yaml.safe_load(crd.read_text())
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        deadline = time.monotonic() + timeout_s
        while not _served(api_client):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{METRICS_GROUP}/{METRICS_VERSION} pods not served")
            time.sleep(0.2)


def _served(api_client: object) -> bool:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        found = client.CustomObjectsApi(api_client).get_api_resources(
            METRICS_GROUP, METRICS_VERSION
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.name == "pods" for r in found.resources)
