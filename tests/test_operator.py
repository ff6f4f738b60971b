"""The controller as an operator, on the real kube-apiserver: a ChainController declares it
(dry run, then live, then paused, with conditions, Events and metrics), two replicas elect one
leader through the namespaces' Lease and hand over when it is killed, the controller checks the
managed objects before it acts (a scaled Deployment, an edited endpoint, a malformed chain),
a second `scripts/control.py` refuses, and the in-cluster manifests pass the server's dry run
and the restricted Pod Security level.

The twin plays kubelet and metrics-server (tests/served.py); each operator step advances it by
one step. Lease timings are shortened (1.5 s / 1.0 s / 0.2 s) so a hand-over takes seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import select
import signal
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import jax
import pytest
import yaml
from control_support import (
    API,
    ENCRYPT,
    ENV,
    MEDIUM,
    Steps,
    agent_configmap,
    cluster_map_file,
    desired,
    rogue_agent,
    rulebook,
    stepped_backend,
)
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from script_runs import start_script
from served import stored
from waits import eventually

from hmk8s.control import cli
from hmk8s.control.agent import export_agent
from hmk8s.control.cluster import ClusterBackend, switch_says_paused
from hmk8s.control.config import ControlConfigError, GuardConfig, parse
from hmk8s.control.events import RateLimit
from hmk8s.control.lease import LeaderElector, lease_name, lease_namespace
from hmk8s.control.loop import Controller
from hmk8s.control.operator import LeaseSettings, Operator, OperatorConfig
from hmk8s.control.serving import Endpoints
from hmk8s.domain.spaces import OP_REMOVE
from hmk8s.domain.usecases import CONFIG_DIR
from hmk8s.k8s import objects
from hmk8s.k8s.client import connect, new_api_client
from hmk8s.k8s.emulated.harness import on_server
from hmk8s.k8s.emulated.twin import TwinClock
from hmk8s.shell.exit import EXIT_BAD_INPUT

pytestmark = pytest.mark.usefixtures("fast_compile")

ROOT = Path(__file__).resolve().parents[1]
CONTROLLER = ROOT / "deploy" / "controller"
LEASE = LeaseSettings(duration_s=1.5, renew_deadline_s=1.0, retry_period_s=0.2)
PERIOD = 0.25
ML = yaml.safe_load((CONFIG_DIR / "ml.yaml").read_text())
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(scope="module")
def crd(apiserver):
    """The ChainController CRD of deploy/controller, created on the session's server."""
    api = new_api_client(apiserver.kubeconfig, apiserver.context)
    body = yaml.safe_load((CONTROLLER / "crd.yaml").read_text())
    try:
        k8s.ApiextensionsV1Api(api).create_custom_resource_definition(body)
    except ApiException as exc:
        assert exc.status == 409
    custom = k8s.CustomObjectsApi(api)

    def served() -> bool:
        try:
            custom.list_cluster_custom_object("hmk8s.io", "v1alpha1", "chaincontrollers")
        except ApiException:
            return False
        return True

    eventually(served, 30, "the CRD is served")
    return api


@pytest.fixture
def emu(apiserver, tmp_path):
    with on_server(apiserver, ML, ENV, backend={"api": API["apiserver"]}, workdir=tmp_path) as e:
        yield e


class Cluster:
    """The test's view: the admin clients, the ChainController API, and object snapshots."""

    def __init__(self, emu, api) -> None:
        self.emu, self.api = emu, api
        self.clients = connect(emu.cmap, check_metrics=False)
        self.namespaces = [c.namespace for c in emu.cmap.clusters]
        self.ns = self.namespaces[0]
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.replicas: list[Operator] = []
        self.threads: list[threading.Thread] = []

    def backend(self, agent, **settings) -> ClusterBackend:
        """A controller's backend on these clusters, stepped by the twin."""
        return stepped_backend(
            agent, self.emu.cmap, self.clients, TwinClock(self.emu.twin), **settings
        )

    def bootstrap(self, agent) -> ClusterBackend:
        """The minimal placement, written as `scripts/control.py bootstrap=true` would."""
        return self.backend(agent, bootstrap=True)

    def objects(self) -> dict:
        return desired(stored(self.clients))

    def agent_configmap(self, agent, tmp_path: Path) -> str:
        return agent_configmap(self.core, self.ns, agent, tmp_path)

    def create(self, name: str, sha: str, **spec: Any) -> None:
        backend = self.emu.cmap.model_dump(mode="json", exclude={"clusters", "kubeconfig"})
        body = {
            "apiVersion": "hmk8s.io/v1alpha1",
            "kind": "ChainController",
            "metadata": {"name": name},
            "spec": {
                "agent": {"configMap": "agent", "paramsSha256": sha},
                "namespaces": self.namespaces,
                "stepSeconds": PERIOD,
                "backend": backend,
                **spec,
            },
        }
        self.custom.create_namespaced_custom_object(*self._args(), body)

    def _args(self) -> tuple[str, str, str, str]:
        return "hmk8s.io", "v1alpha1", self.ns, "chaincontrollers"

    def patch(self, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(*self._args(), name, {"spec": spec})

    def status(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(*self._args(), name).get("status") or {}

    def condition(self, name: str, kind: str) -> dict:
        conds = self.status(name).get("conditions") or []
        return next((c for c in conds if c["type"] == kind), {})

    def replica(self, name: str, identity: str, log: list | None = None) -> Operator:
        """One operator replica in a thread, with its own API client."""
        context = self.emu.cmap.clusters[0].context
        cfg = OperatorConfig(
            name=name,
            namespace=self.ns,
            kubeconfig=str(self.emu.kubeconfig),
            context=context,
            identity=identity,
            lease=LEASE,
            events_burst=200,
            events_refill_s=1.0,
            watch_timeout_s=5,
        )
        keys = itertools.count(1000 * (len(self.replicas) + 1))
        op = Operator(
            cfg,
            new_api_client(self.emu.kubeconfig, context),
            tick=lambda: self.emu.twin.advance(jax.random.PRNGKey(next(keys))),
        )
        if log is not None:
            record_writes(op, log)
        thread = threading.Thread(target=op.run, name=identity, daemon=True)
        thread.start()
        self.replicas.append(op)
        self.threads.append(thread)
        return op

    def close(self) -> None:
        for op in self.replicas:
            op.shutdown()
        for thread in self.threads:
            thread.join(30)

    def events(self) -> list[Any]:
        return [e for ns in self.namespaces for e in self.core.list_namespaced_event(ns).items]


@pytest.fixture
def cluster(emu, crd):
    c = Cluster(emu, crd)
    yield c
    c.close()


def record_writes(op: Operator, log: list) -> None:
    """Every write of ``op`` to the managed objects: (time, identity, method, url)."""
    call_api = op.api_client.call_api

    def call(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        managed = re.search(r"/(deployments|configmaps|services)(/|\?|$)", url)
        if method in WRITES and managed and "dryRun" not in url:
            log.append((time.monotonic(), op.identity, method, url))
        return call_api(method, url, *args, **kwargs)

    op.api_client.call_api = call


def cut_off(op: Operator) -> None:
    """From now on every request of ``op`` fails before it leaves (a dead process, a
    partition): it cannot renew, release or write."""

    def call(*args: Any, **kwargs: Any) -> Any:
        raise OSError("cut off")

    op.api_client.call_api = call


def remove_encrypt(agent) -> int:
    return int(agent.env_params.layout.encode(0, OP_REMOVE, MEDIUM, ENCRYPT, 0))


def http_get(port: int, path: str) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    answer = conn.getresponse()
    return answer.status, answer.read().decode()


def test_a_chaincontroller_dry_run_then_live_then_paused(cluster, tmp_path):
    layout_agent = rulebook()
    rogue = rogue_agent(remove_encrypt(layout_agent))
    cluster.bootstrap(rogue)
    cluster.create("ml", cluster.agent_configmap(rogue, tmp_path), dryRun=True)
    before = cluster.objects()
    op = cluster.replica("ml", "replica-a")
    metrics = Endpoints(0, registry=op.metrics.registry, addr="127.0.0.1")
    probes = Endpoints(0, checks={"/healthz": op.healthz, "/readyz": op.readyz}, addr="127.0.0.1")
    try:
        status = eventually(
            lambda: (s := cluster.status("ml")).get("counters", {}).get("steps", 0) >= 3 and s,
            60,
            "three dry-run steps",
        )
        ready = cluster.condition("ml", "Ready")
        assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
            "True",
            "DryRun",
            1,
        )
        assert {c["type"] for c in status["conditions"]} == {"Ready", "Holding", "Degraded"}
        assert status["mode"] == "DryRun" and status["leader"] == "replica-a"
        assert status["lastDecision"]["source"] in ("agent", "fallback", "hold")
        assert cluster.objects() == before  # a dry run changes nothing
        # `kubectl get chaincontrollers`: the server's table, from the CRD's printer columns
        table = cluster.custom.list_namespaced_custom_object(
            *cluster._args(), _headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
        )
        columns = [c["name"] for c in table["columnDefinitions"]]
        row = dict(zip(columns, table["rows"][0]["cells"], strict=True))
        assert row["Mode"] == "DryRun" and row["Ready"] == "True"
        assert row["Last Action"] and row["Holding"] and row["Source"]
        assert http_get(probes.port, "/readyz")[0] == http_get(probes.port, "/healthz")[0] == 200

        flipped = time.monotonic()
        cluster.patch("ml", {"dryRun": False})
        eventually(lambda: cluster.objects() != before, 30, "a change after dryRun: false")
        acted = time.monotonic() - flipped
        assert acted < PERIOD + 5.0, acted  # within a period (and the step's own API calls)
        eventually(lambda: cluster.status("ml").get("mode") == "Live", 30, "mode Live")
        assert op.term is not None and op.term.backend.created == []  # no restart, no re-adoption

        # someone scales a managed Deployment: a Conflict Event on it, and it is scaled back
        def conflict_event():
            return next((e for e in cluster.events() if e.reason == "Conflict"), None)

        # the agent decides which Deployments exist, so the one scaled is one it manages now; a
        # step in flight may apply its own count over the rogue one before any check sees it
        # (then nothing conflicts): scale again until a step's check finds the rogue count
        tried: dict[str, int] = {}
        for _ in range(5):
            found = cluster.clients[0].list("Deployment", objects.run_selector(None))[0]
            name, want = found.metadata.name, found.spec.replicas
            tried[name] = want
            rogue = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}}
            cluster.clients[0].apply({**rogue, "spec": {"replicas": want + 4}})
            with contextlib.suppress(AssertionError):
                eventually(conflict_event, 10 * PERIOD + 5.0, "a Conflict Event")
                break
        conflict = eventually(conflict_event, 30, "a Conflict Event")
        assert conflict.involved_object.kind == "Deployment"
        assert conflict.involved_object.name in tried
        name = conflict.involved_object.name
        want = tried[name]
        # what it had applied (the live count may have moved with a step in flight) and found
        assert re.search(rf"applied \d+, found {want + 4} \(repairing\)", conflict.message)
        # repaired: the rogue count is gone (the agent's next steps may move the count, or
        # remove the Deployment, so the count before is not what to wait for)
        eventually(
            lambda: (
                (found := cluster.clients[0].read("Deployment", name)) is None
                or found.spec.replicas != want + 4
            ),
            30,
            "scaled back",
        )

        cluster.patch("ml", {"paused": True})
        held = eventually(
            lambda: (
                (c := cluster.condition("ml", "Holding")).get("reason") == "Paused"
                and c.get("observedGeneration") == 3
                and c
            ),
            10,
            "Holding=True, reason=Paused",
        )
        assert held["status"] == "True"
        paused = cluster.objects()
        steps = cluster.status("ml")["counters"]["steps"]
        eventually(lambda: cluster.status("ml")["counters"]["steps"] >= steps + 3, 30, "3 steps")
        assert cluster.objects() == paused  # no change after the pause

        reasons = {(e.reason, e.involved_object.kind) for e in cluster.events()}
        assert ("Applied", "Deployment") in reasons or ("Applied", "ConfigMap") in reasons
        assert ("Refused", "ChainController") in reasons  # the rogue's chain-breaking removal
        assert ("Held", "ChainController") in reasons
        refused = next(e for e in cluster.events() if e.reason == "Refused")
        assert "breaks_chain" in refused.message and "agent's top" in refused.message

        code, text = http_get(metrics.port, "/metrics")
        assert code == 200
        success = r'\{controller="chaincontroller",result="success"\} [1-9]'
        assert re.search("controller_runtime_reconcile_total" + success, text)
        assert "controller_runtime_reconcile_time_seconds_bucket" in text
        assert re.search(
            r"leader_election_master_status\{name=\"hmk8s-controller-\w+\"\} 1\.0", text
        )
        assert re.search(
            r'rest_client_requests_total\{code="200",host="[^"]+",method="GET"\} [1-9]', text
        )

        # an unknown guard key passes the schema (kept for the controller) and is Ready=False
        cluster.patch("ml", {"paused": False, "guard": {"foo": 1}})
        invalid = eventually(
            lambda: (c := cluster.condition("ml", "Ready")).get("status") == "False" and c,
            10,
            "Ready=False",
        )
        assert invalid["reason"] == "InvalidSpec" and "spec.guard.foo" in invalid["message"]
        stopped = cluster.objects()
        time.sleep(4 * PERIOD)
        assert cluster.objects() == stopped
    finally:
        metrics.close()
        probes.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"guard": {"maxPodsTotal": -1}}, "spec.guard.maxPodsTotal"),
        ({"agent": None}, "spec.agent"),
        ({"stepSeconds": 0}, "spec.stepSeconds"),
    ],
)
def test_the_schema_refuses_an_invalid_spec(cluster, spec, message):
    body = {
        "apiVersion": "hmk8s.io/v1alpha1",
        "kind": "ChainController",
        "metadata": {"name": "bad"},
        "spec": {
            "agent": {"configMap": "agent", "paramsSha256": "0" * 64},
            "namespaces": cluster.namespaces,
        },
    }
    for key, value in spec.items():
        if value is None:
            del body["spec"][key]
        else:
            body["spec"][key] = value
    with pytest.raises(ApiException) as refused:
        cluster.custom.create_namespaced_custom_object(*cluster._args(), body)
    assert refused.value.status == 422 and message in refused.value.body


def test_two_replicas_one_leader_and_a_hand_over_when_it_is_killed(cluster, tmp_path):
    agent = rulebook()
    cluster.bootstrap(agent)
    cluster.create("ml", cluster.agent_configmap(agent, tmp_path))
    writes: list = []
    a = cluster.replica("ml", "replica-a", writes)
    b = cluster.replica("ml", "replica-b", writes)
    eventually(lambda: cluster.status("ml").get("counters", {}).get("steps", 0) >= 3, 60, "3 steps")
    leader_name = cluster.status("ml")["leader"]
    leader, standby = (a, b) if leader_name == "replica-a" else (b, a)
    assert {x[1] for x in writes} == {leader_name}  # only the Lease holder writes
    uids = {k: o.uid for k, o in stored(cluster.clients).items() if k[1] == "Deployment"}

    killed = time.monotonic()
    cut_off(leader)  # as if its process died: no renewal, no release, no write gets through
    took_over = eventually(
        lambda: cluster.status("ml").get("leader") == standby.identity and time.monotonic(),
        20,
        "the standby leads",
    )
    hand_over = took_over - killed
    assert LEASE.duration_s - LEASE.retry_period_s - 0.1 < hand_over < 20.0, hand_over
    steps = cluster.status("ml")["counters"]["steps"]
    eventually(lambda: cluster.status("ml")["counters"]["steps"] >= steps + 2, 30, "2 steps")
    first_b = min((t for t, who, _, _ in writes if who == standby.identity), default=None)
    last_a = max(t for t, who, _, _ in writes if who == leader.identity)
    assert first_b is None or last_a < first_b  # never both
    assert standby.term is not None and standby.term.backend.created == []  # adopted
    after = {k: o.uid for k, o in stored(cluster.clients).items() if k[1] == "Deployment"}
    assert all(after.get(k) == uid for k, uid in uids.items() if k in after)  # none re-created
    lease = k8s.CoordinationV1Api(cluster.api).read_namespaced_lease(
        lease_name(cluster.namespaces), lease_namespace(cluster.namespaces)
    )
    assert lease.spec.holder_identity == standby.identity and lease.spec.lease_transitions >= 1


def test_a_deleted_chaincontroller_stands_down_and_a_new_one_is_followed(cluster, tmp_path):
    """Deleting the object ends the term and releases the Lease; one created again under the same
    name (generation 1 again, a new uid) is followed at once, with no restart."""
    agent = rulebook()
    cluster.bootstrap(agent)
    sha = cluster.agent_configmap(agent, tmp_path)
    cluster.create("ml", sha, dryRun=True)
    op = cluster.replica("ml", "replica-a")
    eventually(lambda: cluster.condition("ml", "Ready").get("status") == "True", 60, "Ready")
    cluster.custom.delete_namespaced_custom_object(*cluster._args(), "ml")
    eventually(lambda: op.elector is None and op.term is None, 30, "standing down")
    lease = k8s.CoordinationV1Api(cluster.api).read_namespaced_lease(
        lease_name(cluster.namespaces), lease_namespace(cluster.namespaces)
    )
    assert not lease.spec.holder_identity  # released, not left to expire
    cluster.create("ml", sha, dryRun=True)
    ready = eventually(
        lambda: (c := cluster.condition("ml", "Ready")).get("status") == "True" and c,
        60,
        "Ready on the new object",
    )
    assert ready["observedGeneration"] == 1


def test_the_controller_repairs_or_holds_what_others_edited(cluster):
    agent = rulebook()
    cluster.bootstrap(agent)
    first = cluster.clients[0]
    chain = next(cm for cm in first.list("ConfigMap", "") if cm.metadata.name == "proxy0-chain")
    edited = json.loads(chain.data[objects.CHAIN_KEY])
    edited["hops"][0]["endpoint"] = "evil.example:80"

    def run(on_conflict: str, edit: dict, steps: int = 1) -> tuple[ClusterBackend, Steps]:
        """Adopt, let someone else write ``edit`` (a chain's data, or a whole object), step."""
        backend = cluster.backend(agent, on_conflict=on_conflict)
        if "kind" not in edit:
            edit = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "proxy0-chain"},
                "data": edit,
            }
        first.apply(edit)
        record = Steps()
        Controller(agent, GuardConfig(on_conflict=on_conflict), sinks=[record]).run(backend, steps)
        return backend, record

    def chain_now() -> str:
        return first.read("ConfigMap", "proxy0-chain").data.get(objects.CHAIN_KEY)

    good = chain.data[objects.CHAIN_KEY]
    # hold: the edited endpoint stays, every step holds with the conflict named
    _, record = run("hold", {objects.CHAIN_KEY: json.dumps(edited)}, 2)
    for d, o, _ in record:
        assert d.held.reason == "conflict" and "evil.example:80" in d.held.detail
        assert d.held.detail.startswith("holding on") and not o.changes
    assert "evil.example:80" in chain_now()
    # repair: within one step the applied chain is back, the reason recorded
    _, record = run("repair", {objects.CHAIN_KEY: json.dumps(edited)})
    ((d, o, _),) = record
    assert d.held.reason == "conflict" and d.held.detail.startswith("repairing")
    assert json.loads(chain_now()) == json.loads(good)
    # a scaled Deployment is scaled back
    scale = {"apiVersion": "apps/v1", "kind": "Deployment"}
    scale |= {"metadata": {"name": "hmk8s-encrypt-medium"}, "spec": {"replicas": 5}}
    _, record = run("repair", scale)
    ((d, o, _),) = record
    assert "spec.replicas: applied 1, found 5" in d.held.detail
    assert first.read("Deployment", "hmk8s-encrypt-medium").spec.replicas == 1
    # a malformed chain is a reading error: hold, no crash, at adoption and later
    for broken in (
        {objects.CHAIN_KEY: "{"},
        {objects.CHAIN_KEY: None},  # chain.json removed
        {objects.CHAIN_KEY: '{"hops": [{"function": "x"}]}'},
    ):
        _, record = run("repair", broken, 2)
        for d, o, _ in record:
            assert d.held.reason == "conflict" and not o.changes
        left = {k: v for k, v in broken.items() if v is not None}
        assert (first.read("ConfigMap", "proxy0-chain").data or {}) == left
    # fixed, it adopts the chain again and acts
    _, record = run("repair", {objects.CHAIN_KEY: good}, 2)
    assert all(d.held is None or d.held.reason != "conflict" for d, _, _ in record)


def test_a_second_control_py_refuses_while_the_lease_is_held(cluster, tmp_path, capsys):
    agent = rulebook()
    cluster.bootstrap(agent)
    other = LeaderElector(
        cluster.api,
        lease_namespace(cluster.namespaces),
        lease_name(cluster.namespaces),
        "the-other-controller",
    )
    assert other.try_acquire_or_renew()
    cmap_file = cluster_map_file(cluster.emu.cmap, tmp_path)
    export = export_agent(agent, tmp_path / "agent")
    before = cluster.objects()
    argv = [f"agent={export}", "backend=k8s", f"cluster_map={cmap_file}", "steps=1"]
    assert cli.main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "held by the-other-controller" in err and "\n" not in err
    assert cluster.objects() == before


def test_the_lease_follows_client_gos_timing(crd):
    """Defaults 15 s / 10 s / 2 s, on the server with clocks the test moves: the holder leads
    for the renew deadline after its last renewal; a candidate may take over only once the
    Lease has not changed for a whole duration as it observed it."""
    now = {"a": 0.0, "b": 0.0}
    where = ("default", f"hmk8s-controller-test-{time.monotonic_ns()}")
    a = LeaderElector(crd, *where, "a", clock=lambda: now["a"])
    b = LeaderElector(crd, *where, "b", clock=lambda: now["b"])
    assert a.try_acquire_or_renew() and a.leading
    assert not b.try_acquire_or_renew()  # observed at b's 0
    now["a"] = 9.9
    assert a.leading
    now["a"] = 10.0
    assert not a.leading  # a stops acting at its renew deadline...
    now["b"] = 14.9
    assert not b.try_acquire_or_renew()  # ...before b may take over
    now["b"] = 15.0
    assert b.try_acquire_or_renew() and b.leading and b.transitions == 1
    now["a"] = 11.0
    assert not a.try_acquire_or_renew()  # a sees b's record: it is a candidate again
    b.release()
    assert a.try_acquire_or_renew()  # released: taken at once


def test_events_are_rate_limited_per_object_and_reason():
    t = [0.0]
    limit = RateLimit(burst=3, refill_s=10.0, clock=lambda: t[0])
    assert [limit.allow("k") for _ in range(5)] == [True, True, True, False, False]
    assert limit.allow("other") and limit.suppressed == {"k": 2}
    t[0] = 9.9
    assert not limit.allow("k")
    t[0] = 20.0  # one token back per 10 s: 0.99 at 9.9 s, 2 at 20 s
    assert [limit.allow("k") for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(
    ("value", "paused"),
    [
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
        ("OFF", False),
        ("true", True),
        ("yes", True),
        ("on", True),
        ("True", True),
        ("maybe", True),
        ("", True),
        ("0", True),
        ("{", True),
        (None, True),
    ],
)
def test_the_kill_switch_reads_yaml_booleans_and_fails_closed(value, paused):
    assert switch_says_paused(value) is paused


def test_sigterm_stops_control_py_with_143_and_one_line(cluster, tmp_path):
    agent = rulebook()
    cluster.bootstrap(agent)
    export = export_agent(agent, tmp_path / "agent")
    cmap_file = cluster_map_file(cluster.emu.cmap, tmp_path)
    log = tmp_path / "decisions.jsonl"
    args = [f"agent={export}", "backend=k8s", f"cluster_map={cmap_file}", "dry_run=true"]
    args += ["step_seconds=600", f"log={log}", "live=off"]  # it waits out a long step
    proc = start_script("control.py", tmp_path, *args)
    try:
        leases = k8s.CoordinationV1Api(cluster.api)
        where = lease_name(cluster.namespaces), lease_namespace(cluster.namespaces)

        def holder() -> str | None:
            try:
                return leases.read_namespaced_lease(*where).spec.holder_identity
            except ApiException:
                return None

        try:
            eventually(lambda: holder() or proc.poll() is not None, 120, "holding the Lease")
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()[1][-3000:]) from None
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(2.0)  # into its first step (a signal before it is handled the same way)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] >= 0
    assert err.strip().splitlines()[-1] == (
        f"stopped by SIGTERM after {summary['steps']} steps; the placement is left as it is"
    )
    assert "Traceback" not in err
    assert not holder()  # the Lease is released on the way out


def output_matching(proc: Any, pattern: str, timeout: float) -> re.Match:
    """Read ``proc``'s stderr, unbuffered, until ``pattern`` shows (or fail with it)."""
    text, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stderr], [], [], 0.5)[0]:
            text += os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
            if found := re.search(pattern, text):
                return found
    proc.kill()
    raise AssertionError(f"no {pattern!r} in: {text[-3000:]}")


def test_chain_operator_py_serves_its_probes_and_stops_with_143(cluster, tmp_path):
    """The operator as `scripts/chain_operator.py` runs it: ready once it has listed its
    ChainController (none here: it stands by), metrics served, SIGTERM ends it in one line."""
    context = cluster.emu.cmap.clusters[0].context
    args = ["name=absent", f"namespace={cluster.ns}", f"kubeconfig={cluster.emu.kubeconfig}"]
    args += [f"context={context}", "metrics_port=0", "health_port=0", "identity=smoke"]
    args += ["bind_address=127.0.0.1"]
    proc = start_script("chain_operator.py", tmp_path, *args)
    try:
        found = output_matching(proc, r"metrics on :(\d+)/metrics, probes on :(\d+)/", 120)
        metrics_port, probes_port = (int(p) for p in found.groups())
        eventually(lambda: http_get(probes_port, "/readyz")[0] == 200, 30, "/readyz")
        assert http_get(probes_port, "/healthz") == (200, "ok")
        assert "controller_runtime_reconcile_total" in http_get(metrics_port, "/metrics")[1]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "stopped by SIGTERM; the Lease is released"
    assert "Traceback" not in err


def test_settings_are_checked_and_live_off_works():
    assert parse(["agent=a", "live=off"]).live == "off"
    assert parse(["agent=a", "live=on"]).live == "on"
    for bad, message in [
        ("step_seconds=nan", "step_seconds must be finite"),
        ("step_seconds=inf", "step_seconds must be finite"),
        ("guard.on_conflict=ignore", "guard.on_conflict must be one of"),
    ]:
        with pytest.raises(ControlConfigError, match=message):
            parse(["agent=a", bad])


# -- the in-cluster manifests ----------------------------------------------------------------


def manifests() -> list[dict]:
    return [
        d
        for name in ("controller.yaml", "rbac.yaml")
        for d in yaml.safe_load_all((CONTROLLER / name).read_text())
        if d
    ]


def test_the_controller_pods_meet_the_restricted_level_and_rbac_is_least_privilege():
    (deployment,) = [d for d in manifests() if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    assert all(
        set(v) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"}
        for v in pod["volumes"]
    )
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert re.search(r":\d+\.\d+\.\d+$", container["image"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    args = dict(a.split("=", 1) for a in container["args"])
    assert (
        int(args["health_port"]) == ports["probes"]
        and int(args["metrics_port"]) == ports["metrics"]
    )
    (service,) = [d for d in manifests() if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    kinds = {d["kind"] for d in manifests()}
    assert "ClusterRoleBinding" not in kinds  # the ClusterRole is bound per namespace only
    for role in (d for d in manifests() if d["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    # the image's entry point is the operator
    dockerfile = (CONTROLLER / "Dockerfile").read_text()
    (entry,) = re.findall(r'^ENTRYPOINT \["([^"]+)"\]', dockerfile, flags=re.M)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entry] == "hmk8s.control.operator:entry"
    assert re.search(r"^USER 65532", dockerfile, flags=re.M)


def test_the_manifests_pass_the_servers_dry_run(crd):
    """Every object of deploy/controller, into fresh namespaces, with dryRun=All (the
    namespaces themselves and the example ChainController's CRD are created for real)."""
    from kubernetes import utils

    suffix = f"-{time.monotonic_ns() % 10**6}"
    docs = manifests() + list(yaml.safe_load_all((CONTROLLER / "chaincontroller.yaml").read_text()))
    text = yaml.safe_dump_all(docs)
    for ns in ("hmk8s-system", "hmk8s-0", "hmk8s-1", "hmk8s-2"):
        text = re.sub(rf"\b{ns}\b", ns + suffix, text)
    docs = list(yaml.safe_load_all(text))
    core = k8s.CoreV1Api(crd)
    for d in docs:
        if d["kind"] == "Namespace":
            core.create_namespace(d)
    for ns in ("hmk8s-0", "hmk8s-1", "hmk8s-2"):
        core.create_namespace({"metadata": {"name": ns + suffix}})
    custom = k8s.CustomObjectsApi(crd)
    for d in docs:
        if d["kind"] == "Namespace":
            continue
        if d["kind"] == "ChainController":
            custom.create_namespaced_custom_object(
                "hmk8s.io",
                "v1alpha1",
                d["metadata"]["namespace"],
                "chaincontrollers",
                d,
                dry_run="All",
            )
        else:
            utils.create_from_dict(crd, d, dry_run="All")
    system = "hmk8s-system" + suffix
    assert k8s.AppsV1Api(crd).list_namespaced_deployment(system).items == []  # nothing stored
    assert (
        custom.list_namespaced_custom_object("hmk8s.io", "v1alpha1", system, "chaincontrollers")[
            "items"
        ]
        == []
    )
