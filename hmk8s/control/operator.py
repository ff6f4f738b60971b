"""The controller as a Kubernetes operator: one ChainController object declares it, replicas
elect a leader through the namespaces' Lease, and the leader runs the same `Controller` and
`ClusterBackend` as `scripts/control.py`, posting Events and writing the object's status.

Built on the official client rather than kopf: kopf's handlers are per-object callbacks in an
asyncio loop, and its peering (its own KopfPeering resources) is not a `coordination.k8s.io`
Lease, so neither `scripts/control.py` nor a Go controller could see who holds a set of
namespaces. The loop here keeps controller-runtime's conventions instead: Lease leader election
(15 s / 10 s / 2 s), `metav1.Condition`s with ``observedGeneration``, its metric names and
``/healthz`` ``/readyz``.

Each replica watches its ChainController (a dead watch is re-listed) and wakes at once when its
generation moves. A spec it cannot run is ``Ready=False`` with the reason; one it can run
decides the Lease. The holder adopts the placement and steps; guard, fallback, ``dryRun``,
``paused`` and ``stepSeconds`` change in place, the agent, the namespaces or the backend start
a fresh adoption. A replica that loses the Lease stops writing at once (every write checks
it) and goes back to standby.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
from omegaconf import MISSING
from prometheus_client import Counter, Gauge

from hmk8s.control import resource
from hmk8s.control.agent import PARAMS, Agent, AgentError, action_text, load_agent
from hmk8s.control.cli import controller_identity, stop_on_signals
from hmk8s.control.config import ControlConfigError, parse_settings
from hmk8s.control.events import DecisionEvents, EventRecorder, ObjectRef, RateLimit
from hmk8s.control.lease import LeaderElector, LeaseTiming, lease_name, lease_namespace
from hmk8s.control.loop import Controller, Decision, Outcome, Reading, step_score
from hmk8s.control.observe import ControllerMetrics
from hmk8s.control.serving import Endpoints
from hmk8s.domain.placement import start_state
from hmk8s.domain.state import observe
from hmk8s.shell.exit import refuse

log = logging.getLogger(__name__)
IN_CLUSTER = "in-cluster"
START_ERRORS = {
    "AgentError": "AgentError",
    "AdoptError": "NothingToAdopt",
    "ClusterMapError": "InvalidBackend",
    "ClusterAccessError": "ClusterAccess",
    "UseCaseError": "AgentError",
}


@dataclass
class LeaseSettings:
    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0


@dataclass
class OperatorConfig:
    """The settings of `scripts/chain_operator.py` (``key=value``)."""

    name: str = MISSING
    namespace: str = "default"
    kubeconfig: str | None = None  # None: in the cluster, the pod's ServiceAccount
    context: str | None = None
    identity: str | None = None  # None: <host>_<random> (the pod's name in a pod)
    metrics_port: int = 8080
    health_port: int = 8081
    bind_address: str = "0.0.0.0"  # a pod's probes come from the kubelet; 127.0.0.1 elsewhere
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    events_burst: int = 25
    events_refill_s: float = 300.0
    watch_timeout_s: int = 30


def connect_api(cfg: OperatorConfig) -> Any:
    """An ApiClient: the pod's ServiceAccount when no kubeconfig is named and one is mounted,
    else the kubeconfig (default: $KUBECONFIG, ~/.kube/config)."""
    from kubernetes import client, config

    if cfg.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    from hmk8s.k8s.client import ClusterAccessError, new_api_client

    path = Path(cfg.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config").expanduser()
    if cfg.context is None:
        try:
            _, active = config.list_kube_config_contexts(config_file=str(path))
        except Exception as err:
            raise ClusterAccessError(f"kubeconfig {path}: not usable ({err})") from None
        cfg.context = active["name"]
    return new_api_client(path, cfg.context)


class StatusWriter:
    """A controller sink: the ChainController's status after each step (only the leader has
    one)."""

    def __init__(self, op: Operator, term: Term) -> None:
        self.op, self.term = op, term
        self.holds = self.conflicts = 0

    def record(self, decision: Decision, outcome: Outcome, after: Reading) -> None:
        del after
        self.holds += int(resource.hold_of(decision) is not None)
        self.conflicts += len(decision.reading.health.conflicts)
        status = resource.step_status(
            self.op.status,
            self.term.spec,
            self.op.generation,
            self.op.identity,
            decision,
            outcome,
            self.term.controller.summary,
            action_text(self.term.agent.layout, decision.action),
            self.holds,
            self.conflicts,
            resource.now_text(),
        )
        self.op.write_status(status)


@dataclass
class Term:
    """One leadership over one spec: the agent, the adopted clusters and the controller."""

    spec: resource.Spec
    agent: Agent
    backend: Any
    controller: Controller


class Operator:
    """One replica of the operator for the ChainController ``cfg.namespace/cfg.name``."""

    def __init__(
        self,
        cfg: OperatorConfig,
        api_client: Any,
        *,
        tick: Callable[[], None] | None = None,
    ) -> None:
        from kubernetes import client

        timing = LeaseTiming(**vars(cfg.lease))
        problems = timing.problems()
        for port in ("metrics_port", "health_port"):
            if not 0 <= getattr(cfg, port) <= 65535:
                problems.append(f"{port} must be in [0, 65535], got {getattr(cfg, port)}")
        if cfg.events_burst < 1 or not (0 < cfg.events_refill_s < float("inf")):
            problems.append("events_burst must be >= 1 and events_refill_s finite and > 0")
        if cfg.watch_timeout_s < 1:
            problems.append(f"watch_timeout_s must be >= 1, got {cfg.watch_timeout_s}")
        if problems:
            raise ControlConfigError("; ".join(problems))
        self.cfg, self.api_client, self.timing, self.tick = cfg, api_client, timing, tick
        self.identity = cfg.identity or controller_identity()
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.stop, self.wake = threading.Event(), threading.Event()
        self.metrics = ControllerMetrics()
        self.leader_gauge = Gauge(
            "leader_election_master_status",
            "1 while this replica holds the Lease",
            ["name"],
            registry=self.metrics.registry,
        )
        self.requests = Counter(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host",
            ["code", "method", "host"],
            registry=self.metrics.registry,
        )
        _count_requests(api_client, self.requests)
        self.recorder = EventRecorder(
            api_client, self.identity, RateLimit(cfg.events_burst, cfg.events_refill_s)
        )
        self.obj: dict[str, Any] | None = None
        self.status: dict[str, Any] = {}
        self.generation: int | None = None
        self.uid: str | None = None  # a deleted and re-created object starts at generation 1
        self.spec: resource.Spec | None = None
        self.elector: LeaderElector | None = None
        self._lease_stop: threading.Event | None = None
        self._lease_thread: threading.Thread | None = None
        self.term: Term | None = None
        self._agents: dict[resource.AgentSource, Agent] = {}
        self.synced = False
        self.heartbeat = time.monotonic()

    # -- probes ----------------------------------------------------------------------------------

    def healthz(self) -> str | None:
        """Live while the loop turns: a step never takes much longer than its period, and a
        term's start (loading and compiling the agent) not a minute even on a busy node."""
        limit = 3 * max(self._period(), self.timing.retry_period_s) + 60
        age = time.monotonic() - self.heartbeat
        return None if age < limit else f"the control loop has not turned for {age:.0f} s"

    def readyz(self) -> str | None:
        """Ready once the ChainController has been listed (standbys too)."""
        return None if self.synced else "the ChainController has not been read yet"

    def _period(self) -> float:
        return float(getattr(self.term.backend, "step_seconds", 0.0)) if self.term else 0.0

    # -- the object ------------------------------------------------------------------------------

    def _args(self) -> tuple[str, str, str, str]:
        return resource.GROUP, resource.VERSION, self.cfg.namespace, resource.PLURAL

    def _watch(self) -> None:
        """Keep `obj` current; wake the loop when the generation moves. A watch that ends or
        fails is re-listed after a backoff."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        backoff = 0.5
        while not self.stop.is_set():
            try:
                listed = self.custom.list_namespaced_custom_object(
                    *self._args(), field_selector=f"metadata.name={self.cfg.name}"
                )
                items = listed.get("items", [])
                self._seen(items[0] if items else None)
                self.synced = True
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object,
                    *self._args(),
                    field_selector=f"metadata.name={self.cfg.name}",
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=self.cfg.watch_timeout_s,
                )
                for event in stream:
                    if self.stop.is_set():
                        return
                    if event["type"] == "ERROR":
                        break
                    self._seen(None if event["type"] == "DELETED" else event["object"])
                backoff = 0.5
            except ApiException as exc:
                log.warning(
                    "watch of ChainController %s: HTTP %s; re-listing", self.cfg.name, exc.status
                )
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except (OSError, ValueError) as exc:
                log.warning("watch of ChainController %s: %s; re-listing", self.cfg.name, exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as exc:  # urllib3 protocol errors and the like: same remedy
                log.warning("watch of ChainController %s: %r; re-listing", self.cfg.name, exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _seen(self, obj: dict[str, Any] | None) -> None:
        before = _version(self.obj)
        self.obj = obj
        if _version(obj) != before:
            self.wake.set()

    def write_status(self, status: dict[str, Any]) -> None:
        """Patch the status subresource, as the leader (or of a spec nobody can run)."""
        self.status = status
        try:
            self.custom.patch_namespaced_custom_object_status(
                *self._args(), self.cfg.name, {"status": status}, _request_timeout=10
            )
        except Exception as exc:
            log.warning("status of ChainController %s not written: %s", self.cfg.name, exc)

    def _owner(self) -> ObjectRef:
        uid = (self.obj or {}).get("metadata", {}).get("uid")
        return ObjectRef(
            resource.API_VERSION, resource.KIND, self.cfg.namespace, self.cfg.name, uid
        )

    # -- the loop --------------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.stop.set()
        self.wake.set()

    def run(self) -> None:
        watcher = threading.Thread(target=self._watch, name="watch", daemon=True)
        watcher.start()
        try:
            while not self.stop.is_set():
                self.heartbeat = time.monotonic()
                self.wake.clear()
                if self.obj is not None:
                    self._follow(self.obj)
                elif self.uid is not None:
                    self._forget()
                if self.spec is None or self.elector is None:
                    self.wake.wait(self.timing.retry_period_s)
                    continue
                leading = self.elector.leading
                self.leader_gauge.labels(self.elector.name).set(float(leading))
                if not leading:
                    self._end_term("standing by: the Lease is held elsewhere")
                    self._prepare(self.spec)
                    self.wake.wait(self.timing.retry_period_s)
                    continue
                if self.term is None and not self._start_term(self.spec):
                    self.wake.wait(max(self._spec_period(), self.timing.retry_period_s))
                    continue
                if self.term is not None:
                    self._step(self.term)
        finally:
            self._end_term("stopping")
            self._stop_lease()

    def _step(self, term: Term) -> None:
        """One step; clusters that cannot be used any more (a namespace gone, credentials
        revoked) end the term with Ready=False, and the next turn adopts afresh."""
        from hmk8s.control.cli import bad_input_errors

        try:
            term.controller.run(term.backend, 1)
        except bad_input_errors() as err:
            self._end_term(str(err))
            self._not_ready(START_ERRORS.get(type(err).__name__, type(err).__name__), str(err))
            self.wake.wait(max(self._spec_period(), self.timing.retry_period_s))

    def _spec_period(self) -> float:
        s = self.spec.settings.step_seconds if self.spec else None
        return 2.0 if s is None else s

    def _follow(self, obj: dict[str, Any]) -> None:
        """React to a new generation: check the spec, move the Lease, update or end the
        term."""
        uid, generation = _version(obj)
        if (uid, generation) == (self.uid, self.generation):
            return
        if uid != self.uid and self.uid is not None:
            self._forget()
        self.uid, self.generation = uid, generation
        self.status = dict(obj.get("status") or {})
        try:
            spec = resource.read_spec(obj.get("spec"))
        except resource.SpecError as err:
            self.spec = None
            self._end_term("the spec changed to one that cannot run")
            self._stop_lease()
            self._not_ready("InvalidSpec", str(err))
            return
        name = lease_name(spec.namespaces)
        if self.elector is None or self.elector.name != name:
            self._end_term("the namespaces changed")
            self._stop_lease()
            self._start_lease(spec.namespaces)
        term = self.term
        if term is not None and term.spec.term != spec.term:
            self._end_term("the agent, namespaces or backend changed")
        elif term is not None:
            s = spec.settings
            term.controller.configure(s.guard, s.fallback)
            b = term.backend
            b.dry_run, b.spec_paused, b.on_conflict = s.dry_run, spec.paused, s.guard.on_conflict
            if s.step_seconds is not None:
                b.step_seconds = s.step_seconds
            term.spec = spec
            term.controller.forget_reading()
            b.read_now()
        self.spec = spec

    def _forget(self) -> None:
        """The ChainController was deleted (or replaced by a new one of the same name): end the
        term and give the Lease up, so nothing acts for an object that is gone."""
        log.info("ChainController %s deleted: %s stands down", self.cfg.name, self.identity)
        self._end_term("the ChainController was deleted")
        self._stop_lease()
        self.spec, self.uid, self.generation, self.status = None, None, None, {}

    def _not_ready(self, reason: str, message: str) -> None:
        ready = next((c for c in self.status.get("conditions", []) if c.get("type") == "Ready"), {})
        same = (ready.get("status"), ready.get("reason"), ready.get("message")) == (
            "False",
            reason,
            message,
        )
        if same and self.status.get("observedGeneration") == self.generation:
            return
        log.warning("ChainController %s not ready: %s: %s", self.cfg.name, reason, message)
        self.write_status(
            resource.not_ready_status(
                self.status, self.generation or 0, reason, message, resource.now_text()
            )
        )
        self.recorder.post(self._owner(), "Warning", reason, message)

    def _start_lease(self, namespaces: Sequence[str]) -> None:
        self.elector = LeaderElector(
            self.api_client,
            lease_namespace(namespaces),
            lease_name(namespaces),
            self.identity,
            self.timing,
        )
        self._lease_stop = threading.Event()
        self._lease_thread = threading.Thread(
            target=self.elector.run, args=(self._lease_stop, self.wake), daemon=True
        )
        self._lease_thread.start()

    def _stop_lease(self) -> None:
        if self._lease_stop is not None and self._lease_thread is not None:
            self._lease_stop.set()
            self._lease_thread.join()
        self._lease_stop = self._lease_thread = None
        if self.elector is not None:
            self.leader_gauge.labels(self.elector.name).set(0.0)
        self.elector = None

    def _prepare(self, spec: resource.Spec) -> None:
        """A standby loads and compiles the agent ahead, so a hand-over costs the Lease's
        expiry and the adoption, not a compilation. An agent that cannot load is left for
        the leader to report."""
        if spec.agent in self._agents:
            return
        try:
            agent = self._agent(spec.agent)
        except AgentError as err:
            log.debug("standby: the agent does not load (%s)", err)
            return
        obs = observe(start_state(jax.random.PRNGKey(0), agent.env_params), agent.env_params)
        obs = jax.device_get(obs)
        s = spec.settings
        Controller(agent, s.guard, s.fallback).decide(Reading(obs))
        step_score(obs, agent.env_params)

    def _agent(self, source: resource.AgentSource) -> Agent:
        if source not in self._agents:
            self._agents[source] = self._load_agent(source)
        return self._agents[source]

    def _load_agent(self, source: resource.AgentSource) -> Agent:
        if source.path is not None:
            agent = load_agent(source.path)
        else:
            agent = self._agent_from_configmap(str(source.config_map))
        if agent.manifest.params_sha256 != source.params_sha256:
            raise AgentError(
                f"the agent's parameters digest {agent.manifest.params_sha256[:16]}… is not "
                f"spec.agent.paramsSha256 {source.params_sha256[:16]}…"
            )
        return agent

    def _agent_from_configmap(self, name: str) -> Agent:
        from kubernetes.client.exceptions import ApiException

        from hmk8s.k8s.client import api_errors

        try:
            cm = self.core.read_namespaced_config_map(name, self.cfg.namespace)
        except ApiException as exc:
            raise AgentError(f"ConfigMap {name}: cannot read (HTTP {exc.status})") from None
        except api_errors() as exc:
            raise AgentError(f"ConfigMap {name}: cannot read ({exc})") from None
        data, binary = cm.data or {}, cm.binary_data or {}
        if "agent.json" not in data or PARAMS not in binary:
            raise AgentError(f"ConfigMap {name}: needs data agent.json and binaryData {PARAMS}")
        with tempfile.TemporaryDirectory(prefix="hmk8s-agent-") as tmp:
            (Path(tmp) / "agent.json").write_text(data["agent.json"])
            (Path(tmp) / PARAMS).write_bytes(base64.b64decode(binary[PARAMS]))
            return load_agent(tmp)

    def _start_term(self, spec: resource.Spec) -> bool:
        """Adopt the clusters as the new leader; a failure is Ready=False and a retry."""
        from hmk8s.control.cli import bad_input_errors
        from hmk8s.control.cluster import ClusterBackend, StopClock
        from hmk8s.k8s.client import ClusterClient
        from hmk8s.k8s.config import load_cluster_map

        s = spec.settings
        elector = self.elector
        assert elector is not None
        try:
            agent = self._agent(spec.agent)
            context = self.cfg.context or IN_CLUSTER
            clusters = [{"context": context, "namespace": ns} for ns in spec.namespaces]
            cmap = load_cluster_map(None, **{**spec.backend, "clusters": clusters})
            clients = [ClusterClient(self.api_client, ref, cmap) for ref in cmap.clusters]
            backend = ClusterBackend(
                agent.env_params,
                agent.usecase,
                cmap,
                clients,
                run_id=s.run_id,
                bootstrap=s.bootstrap,
                dry_run=s.dry_run,
                clock=StopClock(self.wake, self.tick),
                step_seconds=s.step_seconds,
                seed=s.seed,
                on_conflict=s.guard.on_conflict,
                leading=lambda: elector.leading,
            )
        except bad_input_errors() as err:
            self._not_ready(START_ERRORS.get(type(err).__name__, type(err).__name__), str(err))
            return False
        backend.spec_paused = spec.paused
        namespaces = tuple(spec.namespaces)
        events = DecisionEvents(
            self.recorder,
            self._owner(),
            namespaces,
            agent.env_params,
            conflicts=lambda: backend.conflicts,
        )
        controller = Controller(agent, s.guard, s.fallback, [self.metrics, events])
        self.term = Term(spec, agent, backend, controller)
        controller.sinks.append(StatusWriter(self, self.term))
        log.info(
            "%s leads ChainController %s (run %s)", self.identity, self.cfg.name, backend.run_id
        )
        self.recorder.post(
            self._owner(), "Normal", "Leading", f"{self.identity} adopted run {backend.run_id}"
        )
        return True

    def _end_term(self, why: str) -> None:
        if self.term is not None:
            log.info(
                "%s ends its term over ChainController %s: %s", self.identity, self.cfg.name, why
            )
            self.term = None


def _version(obj: dict[str, Any] | None) -> tuple[str | None, int | None]:
    """Which object, at which generation: what a change of spec or identity is measured by."""
    meta = (obj or {}).get("metadata", {})
    return meta.get("uid"), meta.get("generation")


def _count_requests(api_client: Any, counter: Counter) -> None:
    """`rest_client_requests_total` as client-go counts it: every request with its answer."""
    call_api = api_client.call_api

    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        host = url.split("/")[2] if "://" in url else ""
        try:
            response = call_api(method, url, *args, **kwargs)
        except Exception as exc:
            counter.labels(str(getattr(exc, "status", "") or "<error>"), method, host).inc()
            raise
        counter.labels(str(response.status), method, host).inc()
        return response

    api_client.call_api = counted


def main(argv: Sequence[str]) -> int:
    """`scripts/chain_operator.py name=<ChainController> [namespace=…] [kubeconfig=…]`: run one
    replica until SIGTERM or Ctrl-C (exit 143 or 130)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True
    )
    from hmk8s.k8s.client import ClusterAccessError

    try:
        cfg = parse_settings(OperatorConfig, argv)
        op = Operator(cfg, connect_api(cfg))
    except (ControlConfigError, ClusterAccessError) as err:
        return refuse(err)
    metrics = Endpoints(cfg.metrics_port, registry=op.metrics.registry, addr=cfg.bind_address)
    checks = {"/healthz": op.healthz, "/readyz": op.readyz}
    probes = Endpoints(cfg.health_port, checks=checks, addr=cfg.bind_address)
    log.info(
        "%s: metrics on :%d/metrics, probes on :%d/healthz and /readyz",
        op.identity,
        metrics.port,
        probes.port,
    )
    with stop_on_signals() as stop:
        threading.Thread(target=lambda: (stop.wait(), op.shutdown()), daemon=True).start()
        try:
            op.run()
        finally:
            metrics.close()
            probes.close()
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        print(f"stopped by {name}; the Lease is released", file=sys.stderr)
        return 128 + stop.signum
    return 0


def entry() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":  # the controller image's entrypoint: python3 -m hmk8s.control.operator
    entry()
