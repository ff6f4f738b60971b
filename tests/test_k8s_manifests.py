"""The manifests under deploy/ and the function pods the backend renders: the restricted Pod
Security Standard, probes, pinned images, network policies that match the pods' labels, and the
shipped proxies, firewall rules and load trace agreeing with the use case they are for."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hmk8s.configs import CONFIG_DIR
from hmk8s.domain.usecases import load_usecase
from hmk8s.k8s import objects
from hmk8s.k8s.config import load_cluster_map
from hmk8s.sim.load_trace import rate_trace, trace_csv

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ML = load_usecase("ml")
PINNED = re.compile(r"(@sha256:[0-9a-f]{64}|:\d+\.\d+\.\d+(-[a-z0-9.-]+)?)$")


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def shipped() -> list[dict]:
    return [d for path in sorted(DEPLOY.glob("*.yaml")) for d in docs(path.name)]


def rendered() -> list[dict]:
    cmap = load_cluster_map()
    return [objects.deployment(cmap, ML, "r1", f, c, 1) for f in range(3) for c in range(3)]


def workloads() -> list[dict]:
    return [d for d in shipped() + rendered() if d["kind"] in ("Deployment", "Job")]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """matchLabels semantics (the only form these manifests use)."""
    assert set(selector) <= {"matchLabels"}
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pod_labels(kind: str) -> dict[str, str]:
    if kind == "function":
        return rendered()[0]["spec"]["template"]["metadata"]["labels"]
    name = {"proxy": "proxies.yaml", "loadgen": "loadgen.yaml"}[kind]
    workload = next(d for d in docs(name) if d["kind"] in ("Deployment", "Job"))
    return workload["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("workload", workloads(), ids=lambda d: d["metadata"]["name"])
def test_every_pod_meets_the_restricted_standard(workload):
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"] == objects.POD_SECURITY
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        assert container["securityContext"] == objects.CONTAINER_SECURITY
        assert PINNED.search(container["image"]), container["image"]
        if workload["kind"] == "Deployment":  # long-running: the kubelet restarts and gates it
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_namespaces_enforce_the_restricted_standard():
    for ns in docs("namespaces.yaml"):
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_images_are_pinned_down_to_the_base():
    cmap = load_cluster_map()
    assert all(PINNED.search(image) for image in cmap.images.values())
    dockerfile = (DEPLOY / "images" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, flags=re.M)
    assert bases and all(PINNED.search(b) or b == "base" for b in bases)
    installs = re.findall(r"pip install [^\n]*", dockerfile)
    assert installs and all(re.search(r"==\d+\.\d+\.\d+$", line) for line in installs)


def test_proxies_are_mls_with_its_timeout():
    cmap = load_cluster_map()
    deployments = [d for d in docs("proxies.yaml") if d["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == [f"proxy{p}" for p in range(3)]
    for proxy, d in zip(ML.proxies, deployments, strict=True):
        assert d["metadata"]["namespace"] == cmap.clusters[proxy.home].namespace
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        options = dict(zip(args[::2], args[1::2], strict=True))
        assert float(options["--timeout"]) == ML.timeout_ms / 1000
        assert float(options["--window"]) == ML.step_seconds
        assert int(options["--function-port"]) == cmap.port


def test_network_policies_let_only_proxies_reach_functions():
    namespaces = {d["metadata"]["name"]: d["metadata"]["labels"] for d in docs("namespaces.yaml")}
    policies = docs("network-policy.yaml")
    assert {p["metadata"]["namespace"] for p in policies} == set(namespaces)
    function, proxy, loadgen = pod_labels("function"), pod_labels("proxy"), pod_labels("loadgen")
    for policy in policies:
        spec = policy["spec"]
        if policy["metadata"]["name"] == "hmk8s-functions":
            assert selects(spec["podSelector"], function)
            assert not selects(spec["podSelector"], proxy)
            assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["egress"] == []
            (rule,) = spec["ingress"]
            (peer,) = rule["from"]
            for ns_labels in namespaces.values():
                assert selects(peer["namespaceSelector"], ns_labels)
            assert selects(peer["podSelector"], proxy)
            assert not selects(peer["podSelector"], loadgen)
            assert not selects(peer["podSelector"], function)
            assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
        else:
            assert selects(spec["podSelector"], proxy)
            assert spec["policyTypes"] == ["Egress"]
            to_functions, to_dns = spec["egress"]
            (peer,) = to_functions["to"]
            assert selects(peer["podSelector"], function)
            assert not selects(peer["podSelector"], proxy)
            assert to_functions["ports"] == [{"protocol": "TCP", "port": load_cluster_map().port}]
            assert {p["port"] for p in to_dns["ports"]} == {53}


def test_the_shipped_firewall_rules_load_and_decide():
    sys.path.insert(0, str(DEPLOY / "images"))
    try:
        nf = importlib.import_module("nf")
    finally:
        sys.path.remove(str(DEPLOY / "images"))
    assert str(nf.FILES) == objects.FUNCTION_FILES
    maps = docs("functions.yaml")
    assert {m["metadata"]["name"] for m in maps} == {objects.RULES_CONFIGMAP}
    for m in maps:
        rules = nf.load_rules(m["data"]["rules.json"])
        assert rules.default == "allow"
        assert rules.decide("10.0.0.1", "POST", "/", b"payload") is None
        assert rules.decide("10.0.0.1", "DELETE", "/x", b"").action == "deny"
        assert rules.decide("10.0.0.1", "GET", "/admin", b"").action == "deny"
        assert rules.decide("10.0.0.1", "POST", "/", b"1 UNION  select x").action == "deny"


def test_the_load_trace_is_mls_profile_and_targets_its_proxies():
    cmap = load_cluster_map()
    config, job = docs("loadgen.yaml")
    assert config["data"]["ml.csv"] == trace_csv(ML, rate_trace(ML, 40, 0))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    targets = [args[i + 1] for i, a in enumerate(args) if a == "--target"]
    assert targets == [
        f"http://proxy{p}.{cmap.clusters[x.home].namespace}.svc.cluster.local:{cmap.proxy_port}/"
        for p, x in enumerate(ML.proxies)
    ]


def test_rate_trace_follows_the_load_profile():
    """Without noise and bursts the trace is the diurnal wave, worked out here."""
    data = yaml.safe_load((CONFIG_DIR / "usecase" / "ml.yaml").read_text())
    for proxy in data["proxies"]:
        proxy.update(noise=0.0, burst_prob=0.0)
    usecase = load_usecase(data)
    rates = rate_trace(usecase, 12, seed=3)
    t = np.arange(12)[:, None] * usecase.step_seconds
    base, amp, period, phase = (
        np.array([getattr(p, k) for p in usecase.proxies])
        for k in ("base_rate", "diurnal_amplitude", "diurnal_period_s", "phase")
    )
    np.testing.assert_allclose(
        rates, base * (1 + amp * np.sin(2 * np.pi * t / period + phase)), rtol=1e-5
    )
