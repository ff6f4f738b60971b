"""The controller on clusters: dry runs write nothing, the guard protects chains and holds on
stale readings, API faults are retried, a restart adopts the placement, bad input changes
nothing.

Every test but the fault injection runs twice (tests/served.py): on the emulated clusters of
`hmk8s.k8s.emulated.harness` and on fresh namespaces of the session's real kube-apiserver, the
twin playing kubelet, the controllers and metrics-server there. The tests see the clusters only
through the `Live` fixture: the controller's clients, a tap on what those clients send and the
server answers, the cluster map, how cluster time passes, and how to take the metrics away.

The agents are built by hand so their choices are known: `rulebook_agent` has Q = 0 and the
rulebook's bonus, so it acts as `hmk8s.policies.heuristics.recommend`; `rogue_agent` always
proposes one given action when the mask allows it (else the no-op).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from served import SERVED, Call, Stored, Tap, played, stored

from hmk8s import sim
from hmk8s.agents.network import QNetwork
from hmk8s.control import cli
from hmk8s.control.agent import Agent, Manifest, export_agent
from hmk8s.control.cluster import SWITCH, ClusterBackend
from hmk8s.control.config import GuardConfig
from hmk8s.control.loop import Controller
from hmk8s.control.observe import ControllerMetrics, DecisionLog
from hmk8s.domain.encoders import onehot_size
from hmk8s.domain.spaces import OP_REMOVE
from hmk8s.domain.usecases import CONFIG_DIR, load_usecase
from hmk8s.k8s.client import ClusterClient, connect
from hmk8s.k8s.config import ClusterMap
from hmk8s.k8s.emulated.harness import Emulation
from hmk8s.k8s.emulated.twin import TwinClock
from hmk8s.k8s.reconcile import placement_of
from hmk8s.policies.heuristics import recommend
from hmk8s.shell.exit import EXIT_BAD_INPUT
from hmk8s.train.runlog import params_sha256

pytestmark = pytest.mark.usefixtures("fast_compile")

ENV = {"encoder": "onehot", "noop": True, "start": "minimal", "episode_steps": 120}
# quick retries; the emulator's injected timeouts hold a call for 0.15 s
API = {
    "emulator": {
        "timeout_s": 0.1,
        "backoff_base_s": 0.005,
        "backoff_max_s": 0.05,
        "max_attempts": 8,
    },
    "apiserver": {"timeout_s": 5.0, "backoff_base_s": 0.05, "backoff_max_s": 0.5},
}
EMULATOR = {"retry_after": "0.05", "timeout_hold_s": 0.15}
ENCRYPT, MEDIUM = 0, 1


@dataclass
class Live:
    """Clusters to control, and the hooks the tests need from them."""

    emulation: Emulation
    clients: list[ClusterClient]
    tap: Tap
    clock: TwinClock
    set_metrics_api: Callable[[bool], None]

    @property
    def cmap(self) -> ClusterMap:
        return self.emulation.cmap

    def objects(self) -> dict[tuple[str, str, str], Stored]:
        return stored(self.clients)


def metrics_switch(kind: str, emu: Emulation) -> Callable[[bool], None]:
    """Take the metrics away and bring them back: the emulator withdraws the metrics.k8s.io
    API; on a real server (metrics.k8s.io pods are a CRD there) metrics-server has no samples."""
    if kind == "emulator":
        return emu.clusters.emulator.serve_metrics
    return lambda on: setattr(emu.twin, "samples_metrics", on)


@pytest.fixture(params=SERVED)
def live(request, tmp_path):
    ml = yaml.safe_load((CONFIG_DIR / "ml.yaml").read_text())
    settings = {"api": API[request.param]}
    with played(
        request, request.param, ml, ENV, backend=settings, workdir=tmp_path, emulator=EMULATOR
    ) as emu:
        clients = connect(emu.cmap, check_metrics=False)
        yield Live(
            emulation=emu,
            clients=clients,
            tap=Tap(clients),
            clock=TwinClock(emu.twin),
            set_metrics_api=metrics_switch(request.param, emu),
        )


def crafted_agent(q: np.ndarray, bonus: float) -> Agent:
    """An ML agent whose Q-values are ``q`` whatever it observes."""
    mapping = yaml.safe_load((CONFIG_DIR / "ml.yaml").read_text())
    _, params = sim.make(load_usecase(mapping), ENV)
    net = QNetwork(hidden=(4,), num_actions=params.layout.num_actions)
    obs_dim = onehot_size(params.layout.clusters, params.layout.functions)
    weights = net.init(jax.random.PRNGKey(0), jnp.zeros((obs_dim,)))
    weights = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), weights)
    weights["params"]["Dense_1"]["bias"] = np.asarray(q, np.float32)
    manifest = Manifest(
        usecase="ml",
        usecase_config=mapping,
        env=ENV,
        hidden=[4],
        num_actions=params.layout.num_actions,
        obs_dim=obs_dim,
        bonus=bonus,
        source_run="crafted",
        step=0,
        seed=0,
        params_sha256=params_sha256(weights),
    )
    return Agent(manifest, weights)


@pytest.fixture(scope="module")
def rulebook_agent() -> Agent:
    return crafted_agent(np.zeros(244), bonus=1.0)


def rogue_agent(action: int) -> Agent:
    q = np.zeros(244)
    q[action], q[-1] = 10.0, 5.0  # the action if allowed, else the no-op
    return crafted_agent(q, bonus=0.0)


def backend(live: Live, agent: Agent, **options) -> ClusterBackend:
    return ClusterBackend(
        agent.env_params,
        agent.usecase,
        live.cmap,
        live.clients,
        clock=live.clock,
        step_seconds=0,
        **options,
    )


class Steps(list):
    """A sink that keeps every (decision, outcome, reading after)."""

    def record(self, decision, outcome, after) -> None:
        self.append((decision, outcome, after))


class Writes(list):
    """A sink that keeps, for every step, the writes the clients sent while it was applied."""

    def __init__(self, tap: Tap) -> None:
        super().__init__()
        self.tap, self.seen = tap, len(tap.calls)

    def record(self, decision, outcome, after) -> None:
        calls, self.seen = self.tap.calls[self.seen :], len(self.tap.calls)
        self.append([c for c in calls if c.mutating])


def accepted_dry_run(call: Call) -> bool:
    return call.dry_run and call.status is not None and 200 <= call.status < 300


def desired(objects: dict[tuple[str, str, str], Stored]) -> dict[tuple[str, str, str], Stored]:
    return {key: o.desired() for key, o in objects.items()}


def decisions(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


_recommend = jax.jit(recommend)


def test_a_dry_run_plans_and_checks_but_changes_nothing(live, rulebook_agent, tmp_path):
    backend(live, rulebook_agent, bootstrap=True)
    before = live.objects()
    dry = backend(live, rulebook_agent, dry_run=True)
    steps, writes = Steps(), Writes(live.tap)
    log = DecisionLog(tmp_path / "decisions.jsonl", rulebook_agent.env_params)
    Controller(rulebook_agent, GuardConfig(), sinks=[steps, writes, log]).run(dry, 20)
    log.close()
    assert live.objects() == before  # same objects, same resourceVersions, none new
    outcomes = [o for _, o, _ in steps]
    planned = [o for o in outcomes if o.changes]
    assert len(outcomes) == 20 and planned and all(o.dry_run and not o.errors for o in planned)
    # every planned step reached the server as dryRun=All writes it accepted; no other writes
    assert [bool(w) for w in writes] == [bool(o.changes) for o in outcomes]
    assert all(accepted_dry_run(c) for w in writes for c in w)
    lines = decisions(tmp_path / "decisions.jsonl")
    assert [x["changes"] for x in lines] == [[str(c) for c in o.changes] for o in outcomes]
    assert all(x["dry_run"] and x["api"]["ok"] for x in lines)
    d, o, _ = steps[0]
    assert d.action == int(_recommend(d.reading.obs, rulebook_agent.env_params))
    assert o.changed


def test_the_guard_refuses_a_chain_breaking_removal_and_the_fallback_acts(
    live, rulebook_agent, tmp_path
):
    layout = rulebook_agent.env_params.layout
    remove_encrypt = int(layout.encode(0, OP_REMOVE, MEDIUM, ENCRYPT, 0))
    rogue = rogue_agent(remove_encrypt)
    clusters = backend(live, rogue, bootstrap=True)
    metrics, steps = ControllerMetrics(), Steps()
    log = DecisionLog(tmp_path / "decisions.jsonl", rogue.env_params)
    Controller(rogue, GuardConfig(), "heuristic", sinks=[metrics, log, steps]).run(clusters, 3)
    log.close()
    d, o, _ = steps[0]
    assert d.explanation.action == remove_encrypt
    assert (d.verdict.reason, d.source) == ("breaks_chain", "fallback")
    assert d.fallback == d.action == int(_recommend(d.reading.obs, rogue.env_params))
    assert o.changed and not o.errors
    deployments = {x.metadata.name: x.spec.replicas for x in live.clients[0].list("Deployment", "")}
    assert deployments["hmk8s-encrypt-medium"] >= 1
    lines = decisions(tmp_path / "decisions.jsonl")
    assert len(lines) == 3
    assert lines[0]["verdict"]["reason"] == "breaks_chain"
    assert lines[0]["chosen"] == {
        "action": d.action,
        "text": lines[0]["fallback"]["text"],
        "source": "fallback",
    }
    assert lines[0]["changes"] == [str(c) for c in o.changes]
    refused = sum(1 for d, _, _ in steps if d.verdict.reason == "breaks_chain")
    fell_back = sum(1 for d, _, _ in steps if d.source == "fallback")
    sample = metrics.registry.get_sample_value
    assert sample("hmk8s_controller_refusals_total", {"reason": "breaks_chain"}) == refused
    assert sample("hmk8s_controller_fallbacks_total", {"policy": "heuristic"}) == fell_back


class Outage:
    """The backend, with the metrics API down for the readings ``down`` (counted from 0) and
    a snapshot of the objects as each reading begins."""

    def __init__(self, inner: ClusterBackend, live: Live, down: range) -> None:
        self.inner, self.live, self.down = inner, live, down
        self.params, self.dry_run = inner.params, inner.dry_run
        self.readings: list[dict] = []

    def observe(self):
        self.live.set_metrics_api(len(self.readings) not in self.down)
        self.readings.append(self.live.objects())
        return self.inner.observe()

    def apply(self, action):
        return self.inner.apply(action)


def test_with_the_metrics_api_down_it_holds_then_resumes(live, rulebook_agent):
    clusters = Outage(backend(live, rulebook_agent, bootstrap=True), live, range(3, 8))
    steps = Steps()
    Controller(rulebook_agent, GuardConfig(), sinks=[steps]).run(clusters, 12)
    for d, o, _ in steps[3:8]:
        assert d.held is not None and d.held.reason == "stale_readings"
        assert d.action == d.noop and not o.changed and not o.changes
    # 0 changes through the outage (pods that were starting may become ready meanwhile)
    assert desired(clusters.readings[3]) == desired(clusters.readings[8])
    after = steps[8:]
    assert all(d.held is None and d.source == "agent" for d, _, _ in after)
    for d, _, _ in after:
        assert d.action == int(_recommend(d.reading.obs, rulebook_agent.env_params))
    assert any(o.changed for _, o, _ in after)


@pytest.mark.parametrize("live", ["emulator"], indirect=True)  # faults: the emulator's own
def test_ten_percent_api_faults_over_200_steps_are_retried_or_recorded(
    live, rulebook_agent, tmp_path
):
    clusters = backend(live, rulebook_agent, bootstrap=True)
    steps = Steps()
    log = DecisionLog(tmp_path / "decisions.jsonl", rulebook_agent.env_params)
    controller = Controller(rulebook_agent, GuardConfig(), sinks=[steps, log])
    emulated = live.emulation.clusters
    emulated.set_faults(0.1)
    controller.run(clusters, 200)
    emulated.set_faults(0.0)
    controller.run(clusters, 1)
    log.close()
    assert len(steps) == 201 and sum(emulated.emulator.faults.values()) > 100
    lines = decisions(tmp_path / "decisions.jsonl")
    assert [x["api"]["errors"] for x in lines] == [o.errors for _, o, _ in steps]
    # level-triggered: whatever failed was retried, so after the quiet step the clusters hold
    # exactly the placement the controller asked for
    mirror = clusters.mirror
    want = placement_of(
        np.asarray(mirror.replicas), np.asarray(mirror.routes), clusters.params.chain
    )
    assert clusters.reconciler.applied == want
    clusters.reconciler.discover()
    assert clusters.reconciler.applied == want


def test_a_restarted_controller_adopts_the_placement_and_the_kill_switch_pauses_it(
    live, rulebook_agent
):
    first = backend(live, rulebook_agent, bootstrap=True)
    booted = live.objects()
    Controller(rulebook_agent, GuardConfig()).run(first, 6)
    before = live.objects()
    assert desired(before) != desired(booted)  # the first controller set replicas or routes
    second = backend(live, rulebook_agent)
    assert second.run_id == first.run_id and second.created == []
    assert second.reconciler.applied == first.reconciler.applied
    np.testing.assert_array_equal(second.mirror.replicas, first.mirror.replicas)
    assert live.objects() == before  # same uids, creation times and versions
    switch = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": SWITCH},
        "data": {"paused": "true"},
    }
    live.clients[2].apply(switch)
    steps = Steps()
    controller = Controller(rulebook_agent, GuardConfig(), sinks=[steps])
    controller.run(second, 3)
    paused = {k: v for k, v in live.objects().items() if k[2] != SWITCH}
    assert desired(paused) == desired(before)  # nothing re-created or changed
    assert all(d.held.reason == "paused" and not o.changed for d, o, _ in steps)
    live.clients[2].apply({**switch, "data": {"paused": "false"}})
    controller.run(second, 2)
    # the first of these decides on the last reading taken while paused
    assert [d.held.reason if d.held else None for d, _, _ in steps[3:]] == ["paused", None]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent={missing}"], "no such run or agent export"),
        (["agent={empty_run}"], "no checkpoint found"),
        (["agent={export}", "usecase=stream"], "trained for use case 'ml', not 'stream'"),
        (["agent={export}", "guard.foo=1"], "unknown setting 'guard.foo'"),
        (["agent={export}", "guard.max_pods_per_cluster=-2"], "must be >= 0 or null, got -2"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing_on_the_clusters(
    live, rulebook_agent, tmp_path, capsys, args, message
):
    backend(live, rulebook_agent, bootstrap=True)
    before = live.objects()
    cmap_file = tmp_path / "clusters.yaml"
    cmap_file.write_text(yaml.safe_dump(live.cmap.model_dump(mode="json")))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    paths = {
        "missing": tmp_path / "missing",
        "empty_run": tmp_path / "empty",
        "export": export_agent(rulebook_agent, tmp_path / "agent"),
    }
    argv = [a.format(**paths) for a in args] + ["backend=k8s", f"cluster_map={cmap_file}"]
    assert cli.main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert live.objects() == before
