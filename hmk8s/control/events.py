"""Kubernetes Events for what the controller does: every applied change on the object it
changed, every refusal, fallback and hold on the ChainController, every conflict on the object
someone else edited, each with the reason and the agent's top choice.

Events go out as core/v1 Events (what ``kubectl describe`` and ``kubectl get events`` show),
rate-limited per object and reason like client-go's spam filter (a burst, then one per refill
interval); what was held back is counted in the next Event of that key. Posting never fails a
step: an Event the server refuses is logged and dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hmk8s.control.agent import action_text
from hmk8s.control.loop import Decision, Outcome, Reading
from hmk8s.domain.params import EnvParams

log = logging.getLogger(__name__)
COMPONENT = "hmk8s-controller"
NORMAL, WARNING = "Normal", "Warning"


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str | None = None


@dataclass
class RateLimit:
    """A token bucket per key: ``burst`` Events at once, then one per ``refill_s``."""

    burst: int = 25
    refill_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[Any, tuple[float, float]] = field(default_factory=dict)
    suppressed: dict[Any, int] = field(default_factory=dict)

    def allow(self, key: Any) -> bool:
        now = self.clock()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) / self.refill_s)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        if not ok:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
        return ok


class EventRecorder:
    """Posts core/v1 Events as ``identity`` of `COMPONENT`."""

    def __init__(self, api_client: Any, identity: str, limit: RateLimit | None = None) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.identity = identity
        self.limit = limit or RateLimit()
        self.posted = 0

    def post(self, ref: ObjectRef, kind: str, reason: str, message: str) -> None:
        key = (ref.namespace, ref.kind, ref.name, reason)
        if not self.limit.allow(key):
            return
        held = self.limit.suppressed.pop(key, 0)
        if held:
            message += f" ({held} similar Events held back)"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {
            "apiVersion": ref.api_version,
            "kind": ref.kind,
            "namespace": ref.namespace,
            "name": ref.name,
        }
        uid = ref.uid or self._uid(ref)
        if uid:
            involved["uid"] = uid
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": COMPONENT, "host": self.identity},
            "reportingComponent": f"hmk8s.io/{COMPONENT}",
            "reportingInstance": self.identity,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(ref.namespace, body, _request_timeout=5)
            self.posted += 1
        except Exception as exc:  # an Event is never worth a failed step
            log.warning("Event %s on %s/%s not posted: %s", reason, ref.kind, ref.name, exc)

    def _uid(self, ref: ObjectRef) -> str | None:
        """The object's uid, so ``kubectl describe`` lists the Event (None if unreadable)."""
        try:
            if ref.kind == "Deployment":
                obj = self.apps.read_namespaced_deployment(ref.name, ref.namespace)
            elif ref.kind == "ConfigMap":
                obj = self.core.read_namespaced_config_map(ref.name, ref.namespace)
            else:
                return None
        except Exception:
            return None
        return obj.metadata.uid


class DecisionEvents:
    """A controller sink: each step's changes, refusals, fallbacks, holds and conflicts as
    Events. ``namespaces[k]`` is cluster k's namespace; ``owner`` the ChainController."""

    def __init__(
        self,
        recorder: EventRecorder,
        owner: ObjectRef,
        namespaces: tuple[str, ...],
        params: EnvParams,
        conflicts: Callable[[], list[Any]] = list,
    ) -> None:
        self.recorder, self.owner, self.namespaces = recorder, owner, namespaces
        self.params, self.conflicts = params, conflicts

    def _ref(self, cluster: int, kind: str, name: str) -> ObjectRef:
        version = "apps/v1" if kind == "Deployment" else "v1"
        return ObjectRef(version, kind, self.namespaces[cluster], name)

    def record(self, decision: Decision, outcome: Outcome, after: Reading) -> None:
        layout = self.params.layout
        e = decision.explanation
        top = e.top[0].text if e.top else action_text(layout, e.action)
        why = f"{decision.source}: {action_text(layout, decision.action)}; agent's top: {top}"
        post = self.recorder.post
        for c in self.conflicts():  # found in the reading after the step
            verb = "repairing" if after.health.repairing else "holding"
            post(self._ref(c.cluster, c.kind, c.name), WARNING, "Conflict", f"{c} ({verb})")
        for change in outcome.changes:
            if change.kind and not outcome.errors:
                reason = "DryRun" if outcome.dry_run else "Applied"
                post(
                    self._ref(change.cluster, change.kind, change.name),
                    NORMAL,
                    reason,
                    f"{change.field}: {change.old} → {change.new} ({why})",
                )
        verdict = decision.verdict
        proposed = action_text(layout, e.action)
        hold = decision.held or (verdict if verdict.hold else None)
        if hold is not None:
            post(self.owner, WARNING, "Held", f"{hold.reason}: {hold.detail}; agent's top: {top}")
        elif not verdict.allowed:
            post(
                self.owner,
                WARNING,
                "Refused",
                f"{verdict.reason}: {proposed} refused ({verdict.detail}); agent's top: {top}",
            )
            if decision.source == "fallback":
                post(self.owner, NORMAL, "Fallback", f"{decision.fallback_policy}: {why}")
        for error in outcome.errors:
            post(self.owner, WARNING, "ApiFailing", error)
