"""One controller per set of namespaces: a `coordination.k8s.io/v1` Lease, elected the way
client-go's leader election does it (controller-runtime's defaults: lease 15 s, renew deadline
10 s, retry 2 s).

A candidate takes the Lease when it is free, released, or has not changed for a whole lease
duration *as this candidate observed it* (its own clock, never the holder's timestamps, so
clock skew cannot hand it over early). The holder renews it every retry period and counts as
leading only while its last successful renewal is younger than the renew deadline; since that
deadline is shorter than the lease duration, a holder that cannot renew stops acting before
anyone else may take over. Every write is an optimistic-concurrency update (resourceVersion),
so two candidates never both win.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
PREFIX = "hmk8s-controller-"


class LeaseHeldError(RuntimeError):
    """The Lease of these namespaces is held by another controller, or cannot be taken."""


@dataclass(frozen=True)
class LeaseTiming:
    """controller-runtime's defaults; tests shorten them."""

    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def problems(self) -> list[str]:
        """What client-go would refuse: duration > renew deadline > 1.2 x retry period > 0."""
        out = []
        if not self.retry_period_s > 0:
            out.append(f"lease retry period must be > 0, got {self.retry_period_s}")
        if not self.renew_deadline_s > 1.2 * self.retry_period_s:
            out.append("lease renew deadline must exceed 1.2 x the retry period")
        if not self.duration_s > self.renew_deadline_s:
            out.append("lease duration must exceed the renew deadline")
        return out


def lease_name(namespaces: Sequence[str]) -> str:
    """The Lease of a set of namespaces (order does not matter): one name for every
    controller, operator or workstation, that would drive exactly these namespaces."""
    digest = hashlib.sha256("\n".join(sorted(set(namespaces))).encode()).hexdigest()
    return PREFIX + digest[:12]


def lease_namespace(namespaces: Sequence[str]) -> str:
    """Where that Lease lives: the first of the namespaces in sorted order."""
    return min(namespaces)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for, holds and releases one Lease for ``identity``."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.timing = timing or LeaseTiming()
        self.clock = clock
        self._renewed_at: float | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.holder: str | None = None
        self.renew_time: dt.datetime | None = None
        self.transitions = 0
        self._was_leading: bool | None = None
        self.problem: str | None = None  # why the last attempt could not even ask

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    @property
    def leading(self) -> bool:
        """True while the last renewal is younger than the renew deadline."""
        renewed = self._renewed_at
        return renewed is not None and self.clock() - renewed < self.timing.renew_deadline_s

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this identity holds the Lease afterwards."""
        from kubernetes.client.exceptions import ApiException

        now = _now()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
        except ApiException as exc:
            if exc.status != 404:
                self.problem = f"HTTP {exc.status}"
                log.warning("%s: read failed (%s)", self.where, self.problem)
                return False
            return self._write(None, now)
        except OSError as exc:
            self.problem = str(exc)
            log.warning("%s: read failed (%s)", self.where, exc)
            return False
        spec = lease.spec
        record = (spec.holder_identity, spec.renew_time, spec.lease_duration_seconds)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self.holder, self.renew_time = spec.holder_identity, spec.renew_time
        self.transitions = spec.lease_transitions or 0
        duration = spec.lease_duration_seconds or self.timing.duration_s
        held_by_other = bool(spec.holder_identity) and spec.holder_identity != self.identity
        if held_by_other and self.clock() - self._observed_at < duration:
            self._renewed_at = None
            return False
        return self._write(lease, now)

    def _write(self, lease: Any, now: dt.datetime) -> bool:
        from kubernetes.client.exceptions import ApiException

        ours = lease is not None and lease.spec.holder_identity == self.identity
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.duration_s)),
            "renewTime": _micro(now),
            "acquireTime": _micro(lease.spec.acquire_time if ours else now),
            "leaseTransitions": (self.transitions if ours else self.transitions + 1)
            if lease is not None
            else 0,
        }
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        try:
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
                self.api.create_namespaced_lease(
                    self.namespace, {**body, "metadata": meta, "spec": spec}, _request_timeout=5
                )
            else:
                meta["resourceVersion"] = lease.metadata.resource_version
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
                self.api.replace_namespaced_lease(
                    self.name,
                    self.namespace,
                    {**body, "metadata": meta, "spec": spec},
                    _request_timeout=5,
                )
        except (ApiException, OSError) as exc:
            status = getattr(exc, "status", None)
            if status != 409:
                self.problem = f"HTTP {status}" if status else str(exc)
                log.warning("%s: update failed (%s)", self.where, self.problem)
            return False
        if not ours:
            log.info("%s: %s took the lead", self.where, self.identity)
        self._renewed_at, self.problem = self.clock(), None
        self.holder, self.transitions = self.identity, spec["leaseTransitions"]
        return True

    def acquire_or_refuse(self, wait: Callable[[float], object] = time.sleep) -> None:
        """For a controller that should not stand by: take the Lease, or raise `LeaseHeldError`
        naming the holder. A Lease whose renewTime (the server's) is older than its duration
        looks abandoned: it is watched for one duration, as any candidate would, then taken."""
        if self.try_acquire_or_renew():
            return
        stale = self.renew_time is not None and _age(self.renew_time) > self.timing.duration_s
        if stale:
            wait(self.timing.duration_s + self.timing.retry_period_s)
            if self.try_acquire_or_renew():
                return
        if not self.holder or self.holder == self.identity:
            raise LeaseHeldError(
                f"{self.where}: cannot take it ({self.problem}); the controller needs get, "
                "create and update on leases (deploy/rbac.yaml)"
            )
        age = "" if self.renew_time is None else f", renewed {_age(self.renew_time):.0f} s ago"
        raise LeaseHeldError(
            f"{self.where} is held by {self.holder}{age}: another controller drives these "
            "namespaces; stop it, or wait for its lease to expire"
        )

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Campaign and renew every retry period until ``stop``; release the Lease at the end
        if held, so a standby takes over at once."""
        while not stop.is_set():
            leading = self.try_acquire_or_renew()
            if wake is not None and leading != self._was_leading:
                wake.set()
            self._was_leading = leading
            stop.wait(self.timing.retry_period_s)
        self.release()

    def release(self) -> None:
        """Give the Lease up (client-go's ReleaseOnCancel): empty holder, 1 s duration."""
        from kubernetes.client.exceptions import ApiException

        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _now()
            self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=5)
            log.info("%s: released by %s", self.where, self.identity)
        except (ApiException, OSError) as exc:
            log.warning("%s: release failed (%s); it expires on its own", self.where, exc)


def _age(t: dt.datetime) -> float:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return (_now() - t).total_seconds()
