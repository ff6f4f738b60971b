"""The Kubernetes backend end to end: the official client over HTTP against the loopback
emulator and a real API server (127.0.0.1 only), the twin playing the clusters."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import yaml
from gymnasium.error import ResetNeeded
from served import SERVED, labelled, played

from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES
from hmk8s.k8s import objects
from hmk8s.k8s.cleanup import delete_labelled
from hmk8s.k8s.client import ClusterAccessError, ClusterClient, new_api_client
from hmk8s.k8s.emulated.harness import emulation
from hmk8s.k8s.retry import ApiCallError

FIREWALL, ENCRYPT = FUNCTION_NAMES.index("firewall"), FUNCTION_NAMES.index("encrypt")
SMALL, MEDIUM = CONFIG_NAMES.index("small"), CONFIG_NAMES.index("medium")


def named(clusters, kind: str, namespace: str, name: str) -> dict | None:
    found = [o for o in clusters.objects(kind, namespace) if o["metadata"]["name"] == name]
    return found[0] if found else None


ENV_CFG = {"start": "empty", "episode_steps": 10}


@pytest.fixture(scope="module", params=SERVED)
def emu(request):
    with played(request, request.param, "ml", ENV_CFG) as e:
        yield e


@pytest.fixture(scope="module")
def emulated():
    """The emulator alone: these tests withdraw the metrics API or inject faults."""
    with emulation("ml", ENV_CFG) as e:
        yield e


def test_every_action_kind_becomes_api_objects(emu):
    env = emu.make_env()
    lay = env.params.layout
    clusters = emu.clusters
    ns0, ns1 = clusters.namespaces[0], clusters.namespaces[1]
    assert [p.home for p in emu.usecase.proxies] == [0, 1, 2]
    with env:
        env.reset(seed=1)
        # start "empty": no instance, and each proxy's chain says every hop is broken
        assert sorted(o["kind"] for o in labelled(clusters)) == ["ConfigMap"] * 3
        deploy = lay.encode(0, OP_DEPLOY, SMALL, FIREWALL, 0)
        _, _, _, _, info = env.step(deploy)
        assert not info["invalid"] and info["api_errors"] == []
        dep = named(clusters, "apps/v1/deployments", ns0, "hmk8s-firewall-small")
        svc = named(clusters, "v1/services", ns0, "hmk8s-firewall-small")
        assert dep["spec"]["replicas"] == 1 and svc is not None
        for obj in (dep, svc):
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "hmk8s"
            assert obj["metadata"]["labels"]["hmk8s.io/run-id"] == env.run_id
        cpu = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        assert cpu == "250m"  # ML's firewall/small requests 0.25 cores
        chain0 = yaml.safe_load(
            named(clusters, "v1/configmaps", ns0, "proxy0-chain")["data"]["chain.json"]
        )
        assert [h["endpoint"] for h in chain0["hops"]] == [
            f"hmk8s-firewall-small.{ns0}.svc.cluster.local:8080",
            None,
        ]

        env.step(deploy)  # a second replica of the same instance
        assert (
            named(clusters, "apps/v1/deployments", ns0, "hmk8s-firewall-small")["spec"]["replicas"]
            == 2
        )
        env.step(lay.encode(0, OP_ASSIGN, SMALL, FIREWALL, 1))  # proxy 1 (home 1) -> cluster 0
        chain1 = yaml.safe_load(
            named(clusters, "v1/configmaps", ns1, "proxy1-chain")["data"]["chain.json"]
        )
        assert chain1["hops"][0]["endpoint"] == (
            f"hmk8s-firewall-small.{ns0}.svc.clusterset.local:8080"
        )

        remove = lay.encode(0, OP_REMOVE, SMALL, FIREWALL, 0)
        env.step(remove)
        assert (
            named(clusters, "apps/v1/deployments", ns0, "hmk8s-firewall-small")["spec"]["replicas"]
            == 1
        )
        _, _, _, _, info = env.step(remove)  # zero replicas: the instance is gone, hops broken
        assert info["api_errors"] == []
        assert named(clusters, "apps/v1/deployments", ns0, "hmk8s-firewall-small") is None
        assert named(clusters, "v1/services", ns0, "hmk8s-firewall-small") is None
        chain0 = yaml.safe_load(
            named(clusters, "v1/configmaps", ns0, "proxy0-chain")["data"]["chain.json"]
        )
        assert chain0["hops"][0]["endpoint"] is None

        _, _, _, _, info = env.step(remove)  # nothing left to remove: invalid, no change
        assert info["invalid"]
    assert labelled(clusters) == []


def test_observation_comes_from_status_and_metrics(emu):
    env = emu.make_env()
    lay = env.params.layout
    clusters = emu.clusters
    with env:
        env.reset(seed=2)
        for action in (
            [lay.encode(1, OP_DEPLOY, MEDIUM, FIREWALL, p) for p in range(3)]
            + [lay.encode(1, OP_DEPLOY, SMALL, ENCRYPT, p) for p in range(3)]
            + [lay.noop_index] * 4
        ):
            env.step(action)
        obs = env.structured_observation
        request = {
            (f, c): cfg.cpu_request
            for f, fn in enumerate(emu.usecase.functions.ordered())
            for c, cfg in enumerate(fn.configs())
        }
        ns = clusters.namespaces[1]
        for dep in clusters.objects("apps/v1/deployments", ns):
            labels = dep["metadata"]["labels"]
            f = FUNCTION_NAMES.index(labels["hmk8s.io/function"])
            c = CONFIG_NAMES.index(labels["hmk8s.io/config"])
            assert int(obs.ready[1, f, c]) == dep["status"]["readyReplicas"]
            assert int(obs.replicas[1, f, c]) == dep["spec"]["replicas"]
            pods = [
                pm
                for pm in clusters.objects("metrics.k8s.io/v1beta1/pods", ns)
                if pm["metadata"]["labels"]["hmk8s.io/instance"] == dep["metadata"]["name"]
            ]
            used = sum(int(pm["containers"][0]["usage"]["cpu"][:-1]) * 1e-9 for pm in pods)
            expected = used / (len(pods) * request[(f, c)])
            assert obs.instance_util[1, f, c] == pytest.approx(expected, rel=1e-5)
        assert int(obs.pods[1]) == 6 and int(obs.pods.sum()) == 6


def test_missing_metrics_are_assumed_at_full_request(emulated):
    emu = emulated
    env = emu.make_env()
    lay = env.params.layout
    with env:
        env.reset(seed=3)
        for p in range(3):
            env.step(lay.encode(0, OP_DEPLOY, SMALL, FIREWALL, p))
        env.step(lay.noop_index)
        emu.clusters.emulator.serve_metrics(False)  # metrics-server goes away mid-episode
        try:
            _, _, _, _, info = env.step(lay.noop_index)
        finally:
            emu.clusters.emulator.serve_metrics(True)
        obs = env.structured_observation
        assert any("PodMetrics" in e for e in info["api_errors"])
        assert info["assumed"]["cpu_pods"] == 3
        assert float(obs.instance_util[0, FIREWALL, SMALL]) == pytest.approx(1.0)
        assert float(obs.cpu_util[0]) == pytest.approx(1.0)


def test_full_episode_truncates_and_cleans_up(emu):
    env = emu.make_env()
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=4)
    steps, truncated = 0, False
    while not truncated:
        action = int(rng.choice(np.flatnonzero(info["action_mask"])))
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        assert env.observation_space.contains(obs) and np.isfinite(reward) and not terminated
        assert info["api_errors"] == []
    assert steps == 10
    with pytest.raises(ResetNeeded, match="the episode has ended"):
        env.step(action)  # refused before any call reaches the clusters
    report = env.close()
    assert report.clean and labelled(emu.clusters, env.run_id) == []


def test_exception_mid_episode_still_cleans_up(emu):
    with pytest.raises(RuntimeError, match="boom"), emu.make_env() as env:
        env.reset(seed=5)
        env.step(env.params.layout.encode(2, OP_DEPLOY, MEDIUM, ENCRYPT, 2))
        assert labelled(emu.clusters, env.run_id)
        raise RuntimeError("boom")
    assert labelled(emu.clusters) == []


def test_a_step_whose_calls_fail_reports_and_the_next_repairs(emulated):
    emu = emulated
    api = emu.cmap.api.model_copy(update={"max_attempts": 2, "backoff_base_s": 0.001})
    env = emu.make_env(api=api)
    lay = env.params.layout
    clusters = emu.clusters
    with env:
        env.reset(seed=6)
        clusters.set_faults(1.0, ["500"])  # the API server fails every request for a step
        try:
            _, reward, _, _, info = env.step(lay.encode(2, OP_DEPLOY, SMALL, ENCRYPT, 2))
        finally:
            clusters.set_faults(0.0)
        assert np.isfinite(reward) and not info["invalid"]
        assert any(e.startswith("scale ") for e in info["api_errors"])
        assert info["assumed"]["latency"] == 3  # every proxy read failed: timeout assumed
        assert named(clusters, "apps/v1/deployments", "hmk8s-2", "hmk8s-encrypt-small") is None
        _, _, _, _, info = env.step(lay.noop_index)
        assert info["api_errors"] == []
        dep = named(clusters, "apps/v1/deployments", "hmk8s-2", "hmk8s-encrypt-small")
        assert dep["spec"]["replicas"] == 1
        assert named(clusters, "v1/services", "hmk8s-2", "hmk8s-encrypt-small") is not None


def test_a_dead_api_stops_the_env_after_max_failed_steps(emulated):
    """Filled-in readings are fine for a step, not for a run: after `max_failed_steps` steps
    in a row with API errors the env raises a fatal error (its worker retires at once)."""
    emu = emulated
    api = emu.cmap.api.model_copy(update={"max_attempts": 2, "backoff_base_s": 0.001})
    env = emu.make_env(api=api, max_failed_steps=3)
    noop = env.params.layout.noop_index
    with env:
        env.reset(seed=7)
        emu.clusters.set_faults(1.0, ["500"])
        try:
            for _ in range(2):
                _, _, _, _, info = env.step(noop)
                assert info["api_errors"]
            with pytest.raises(ClusterAccessError, match="failed on 3 steps in a row") as err:
                env.step(noop)
            assert err.value.fatal
        finally:
            emu.clusters.set_faults(0.0)
        _, _, _, _, info = env.step(noop)  # the API is back: the count starts again
        assert info["api_errors"] == []


def test_a_reading_source_that_keeps_failing_stops_the_env(emulated):
    """An unreachable Prometheus is not a latency at the timeout for the rest of the run: its
    failed queries are errors of the step, and after `max_failed_steps` the env stops."""
    emu = emulated
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    latency = emu.cmap.latency.model_copy(
        update={"source": "prometheus", "prometheus_url": f"http://127.0.0.1:{closed}"}
    )
    api = emu.cmap.api.model_copy(update={"max_attempts": 1})
    env = emu.make_env(api=api, latency=latency, max_failed_steps=2)
    noop = env.params.layout.noop_index
    with env:
        env.reset(seed=7)
        _, _, _, _, info = env.step(noop)
        assert sum("prometheus query" in e for e in info["api_errors"]) == 6  # 3 proxies x 2
        assert info["assumed"]["latency"] == 3
        with pytest.raises(ClusterAccessError, match="failed on 2 steps in a row") as err:
            env.step(noop)
        assert err.value.fatal and "prometheus query" in str(err.value)


def test_an_unparsable_answer_is_an_api_error(emulated):
    """A Service the client cannot turn into its model (a newer client, an older server)."""
    cmap, ref = emulated.cmap, emulated.cmap.clusters[0]
    bad = objects.service(cmap, "garbled", 0, 0)
    bad["metadata"]["namespace"] = ref.namespace
    bad["spec"]["ports"] = "not a list of ports"
    emulated.clusters.run(
        emulated.clusters.emulator.put("v1/services", ref.namespace, bad["metadata"]["name"], bad)
    )
    client = ClusterClient(new_api_client(emulated.kubeconfig, ref.context), ref, cmap)
    with pytest.raises(ApiCallError, match="unparsable answer"):
        client.read("Service", bad["metadata"]["name"])
    report = delete_labelled([client], "garbled", wait_s=0.0)
    assert report.errors and "unparsable answer" in report.errors[0]
    assert report.remaining == -1 and not report.clean
    assert client.delete("Service", bad["metadata"]["name"])  # a delete does not parse it
    assert labelled(emulated.clusters, "garbled") == []
