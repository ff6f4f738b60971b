"""The ChainController custom resource (`hmk8s.io/v1alpha1`): its spec read into the
controller's settings, and its status (conditions, last decision, counters) written back.

Pure functions of plain dicts: the operator (`hmk8s.control.operator`) reads and patches the
object; `deploy/controller/crd.yaml` is the schema the API server validates against. Fields the
schema cannot refuse on a 1.20 server (an unknown guard key: structural schemas prune rather
than reject) are refused here and reported as ``Ready=False, reason=InvalidSpec``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from hmk8s.control.config import ControlConfig, ControlConfigError, settings_from, validate
from hmk8s.control.loop import Decision, Outcome, Summary

GROUP, VERSION, PLURAL, KIND = "hmk8s.io", "v1alpha1", "chaincontrollers", "ChainController"
API_VERSION = f"{GROUP}/{VERSION}"
SPEC_KEYS = {
    "agent",
    "namespaces",
    "guard",
    "fallback",
    "dryRun",
    "paused",
    "stepSeconds",
    "runId",
    "bootstrap",
    "seed",
    "backend",
}
HOLD_REASONS = {
    "paused": "Paused",
    "conflict": "Conflict",
    "stale_readings": "StaleReadings",
    "api_failing": "ApiFailing",
    "rate_limit": "RateLimited",
}
_SHA = re.compile(r"^[0-9a-f]{64}$")


class SpecError(ValueError):
    """A spec the controller cannot run (its message becomes the Ready condition's)."""


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class AgentSource:
    """Where the exported agent is: a ConfigMap of the ChainController's namespace
    (``agent.json`` and ``binaryData.params.msgpack``) or a mounted folder, and the digest
    its parameters must have."""

    params_sha256: str
    config_map: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Spec:
    """A ChainController's spec, checked. ``settings`` are `scripts/control.py`'s (guard,
    fallback, dry run, step); ``term`` is what, changed, needs a fresh adoption."""

    agent: AgentSource
    namespaces: tuple[str, ...]
    settings: ControlConfig
    paused: bool
    backend: dict[str, Any] = field(default_factory=dict)

    @property
    def term(self) -> tuple[Any, ...]:
        s = self.settings
        return (self.agent, self.namespaces, repr(self.backend), s.run_id, s.bootstrap, s.seed)


def read_spec(spec: Any) -> Spec:
    """Check a ChainController's spec; every problem is one `SpecError` line."""
    if not isinstance(spec, dict):
        raise SpecError("spec must be an object")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SpecError(f"unknown spec fields {unknown}")
    agent = spec.get("agent")
    if not isinstance(agent, dict) or not isinstance(agent.get("paramsSha256"), str):
        raise SpecError("spec.agent with paramsSha256 is required")
    extra = sorted(set(agent) - {"configMap", "path", "paramsSha256"})
    if extra:
        raise SpecError(f"unknown spec.agent fields {extra}")
    if not _SHA.match(agent["paramsSha256"]):
        raise SpecError("spec.agent.paramsSha256 must be 64 lowercase hex digits")
    if (agent.get("configMap") is None) == (agent.get("path") is None):
        raise SpecError("spec.agent needs exactly one of configMap and path")
    namespaces = spec.get("namespaces")
    if (
        not isinstance(namespaces, list)
        or not namespaces
        or len(set(namespaces)) != len(namespaces)
    ):
        raise SpecError("spec.namespaces must list one or more distinct namespaces")
    guard = spec.get("guard") or {}
    if not isinstance(guard, dict):
        raise SpecError("spec.guard must be an object")
    mapping = {
        "agent": "<resource>",
        "backend": "k8s",
        "guard": {snake(k): v for k, v in guard.items()},
        "dry_run": spec.get("dryRun", False),
        "fallback": spec.get("fallback", "heuristic"),
        "step_seconds": spec.get("stepSeconds"),
        "run_id": spec.get("runId"),
        "bootstrap": spec.get("bootstrap", False),
        "seed": spec.get("seed", 0),
        "live": "off",
    }
    try:
        settings = settings_from(ControlConfig, mapping)
        validate(settings)
    except ControlConfigError as err:
        raise SpecError(str(err).replace("'guard.", "'spec.guard.")) from None
    backend = spec.get("backend") or {}
    if not isinstance(backend, dict) or {"clusters", "kubeconfig"} & set(backend):
        raise SpecError("spec.backend must be an object without clusters or kubeconfig")
    return Spec(
        agent=AgentSource(agent["paramsSha256"], agent.get("configMap"), agent.get("path")),
        namespaces=tuple(namespaces),
        settings=settings,
        paused=bool(spec.get("paused", False)),
        backend=dict(backend),
    )


# -- status ----------------------------------------------------------------------------------


def now_text(t: dt.datetime | None = None) -> str:
    return (t or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """`metav1.Condition` semantics: ``lastTransitionTime`` moves only when the status does.
    Messages are never empty (the 1.20 server this is tested on stores "" as null)."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else now
    new = {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": (message or reason)[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }
    return [c for c in conditions if c.get("type") != kind] + [new]


def mode(spec: Spec) -> str:
    if spec.paused:
        return "Paused"
    return "DryRun" if spec.settings.dry_run else "Live"


def hold_of(decision: Decision) -> tuple[str, str] | None:
    """(Holding reason, message) of a step, None when nothing held it."""
    held = decision.held
    if held is None and decision.verdict.hold:
        held = decision.verdict
    if held is None:
        return None
    return HOLD_REASONS.get(str(held.reason), "Held"), held.detail


def step_status(
    previous: dict[str, Any],
    spec: Spec,
    generation: int,
    leader: str,
    decision: Decision,
    outcome: Outcome,
    summary: Summary,
    action_text: str,
    holds: int,
    conflicts: int,
    now: str,
) -> dict[str, Any]:
    """The status after one step of the leader."""
    conds = list(previous.get("conditions") or [])
    conds = set_condition(
        conds, "Ready", True, mode(spec), "controlling as the Lease holder", generation, now
    )
    hold = hold_of(decision)
    if hold is None:
        conds = set_condition(conds, "Holding", False, "Acting", "no hold", generation, now)
    else:
        conds = set_condition(conds, "Holding", True, hold[0], hold[1], generation, now)
    problems = [*outcome.errors, *decision.reading.health.api_errors]
    if problems:
        conds = set_condition(conds, "Degraded", True, "ApiErrors", problems[0], generation, now)
    elif decision.reading.health.conflicts:
        detail = decision.reading.health.conflicts[0]
        conds = set_condition(conds, "Degraded", True, "Conflict", detail, generation, now)
    else:
        conds = set_condition(conds, "Degraded", False, "AsExpected", "no errors", generation, now)
    verdict = decision.verdict
    return {
        "observedGeneration": generation,
        "mode": mode(spec),
        "leader": leader,
        "holding": "No" if hold is None else hold[0],
        "lastDecision": {
            "step": decision.step,
            "time": now,
            "action": action_text,
            "source": decision.source,
            "refused": None if verdict.allowed else str(verdict.reason),
            "changes": [str(c) for c in outcome.changes][:8],
        },
        "counters": {
            "steps": summary.steps,
            "changes": summary.changes,
            "refusals": sum(summary.refusals.values()),
            "fallbacks": summary.fallbacks,
            "holds": holds,
            "conflicts": conflicts,
            "apiErrors": summary.api_errors,
        },
        "conditions": conds,
    }


def not_ready_status(
    previous: dict[str, Any], generation: int, reason: str, message: str, now: str
) -> dict[str, Any]:
    """The status of a spec or an agent the controller cannot run: Ready=False with why."""
    conds = set_condition(
        list(previous.get("conditions") or []), "Ready", False, reason, message, generation, now
    )
    return {**previous, "observedGeneration": generation, "conditions": conds}
