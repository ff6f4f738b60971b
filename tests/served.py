"""Clusters for the k8s backend's end-to-end tests, one kind per parameter: `emulator` (kmock's
loopback emulator, with fault injection) or `apiserver` (fresh namespaces of the session's real
kube-apiserver, see the `apiserver` fixture), and what a test reads of them through the
kubernetes client alike on both."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest

from hmk8s.k8s import objects
from hmk8s.k8s.client import KINDS, ClusterClient
from hmk8s.k8s.emulated.apiclusters import WORKLOADS
from hmk8s.k8s.emulated.harness import Emulation, emulation, on_server

SERVED = ("emulator", "apiserver")
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


def played(
    request: pytest.FixtureRequest,
    kind: str,
    *args: Any,
    emulator: Mapping[str, Any] | None = None,
    **options: Any,
) -> AbstractContextManager[Emulation]:
    """`emulation(*args, **options, **emulator)` or `on_server(apiserver, *args, **options)`;
    `emulator` holds the options only the emulator has (`retry_after`, `fault_rate`, ...)."""
    if kind == "emulator":
        return emulation(*args, **options, **dict(emulator or {}))
    return on_server(request.getfixturevalue("apiserver"), *args, **options)


def labelled(clusters: Any, run_id: str | None = None) -> list[dict]:
    """Every object carrying the hmk8s owner label (of one run, or of all runs), listed over
    every namespace of the emulator or the server."""
    selector = objects.run_selector(run_id)
    return [o for kind in WORKLOADS for o in clusters.objects(kind, selector=selector)]


class Stored(NamedTuple):
    """What identifies one stored object and its version, and what hmk8s sets in it."""

    uid: str
    created: Any
    generation: int | None
    resource_version: str
    value: Any

    def desired(self) -> Stored:
        """The object less its resourceVersion, which status writes (the cluster's) also move;
        what a client asks for moves the generation or the value."""
        return self._replace(resource_version="")


def stored(clients: Iterable[ClusterClient]) -> dict[tuple[str, str, str], Stored]:
    """Every Deployment, Service and ConfigMap of the clients' namespaces, by (namespace, kind,
    name), with the replicas of a Deployment and the data of a ConfigMap as its value."""
    out = {}
    for client in clients:
        for kind in KINDS:
            for o in client.list(kind, ""):
                value = None
                if kind == "Deployment":
                    value = o.spec.replicas
                elif kind == "ConfigMap":
                    value = o.data
                meta = o.metadata
                out[client.namespace, kind, meta.name] = Stored(
                    meta.uid, meta.creation_timestamp, meta.generation, meta.resource_version, value
                )
    return out


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    status: int | None  # None: no HTTP answer (refused, timed out)

    @property
    def dry_run(self) -> bool:
        return "dryRun=All" in self.url

    @property
    def mutating(self) -> bool:
        return self.method in MUTATING


class Tap:
    """Every API call the clients send from now on, with the server's answer: what reached the
    server, seen from the client side, so the same on any server."""

    def __init__(self, clients: Iterable[ClusterClient]) -> None:
        self.calls: list[Call] = []
        for api_client in {id(c.api_client): c.api_client for c in clients}.values():
            api_client.call_api = self._recorded(api_client.call_api)

    def _recorded(self, call_api: Any) -> Any:
        def call(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            try:
                response = call_api(method, url, *args, **kwargs)
            except Exception as exc:
                self.calls.append(Call(method, url, getattr(exc, "status", None) or None))
                raise
            self.calls.append(Call(method, url, response.status))
            return response

        return call
