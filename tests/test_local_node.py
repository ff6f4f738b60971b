"""A real one-machine node end to end: `scripts/local_cluster.py up`, the ML chain deployed by the
backend, real pods of the data-plane images answering requests through proxy -> firewall ->
encrypt, real kubelet CPU readings as PodMetrics, the real HPA controller acting, and `down`
leaving nothing behind.

It needs root, cgroups, Debian's containerd/runc/CNI plugins/iptables/umoci/etcd and
`../shared/kube-node` (CI installs the packages); elsewhere it skips and says which is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from control_support import agent_configmap, rogue_agent
from script_runs import run_script
from waits import eventually as _eventually

from hmk8s import sim
from hmk8s.control.agent import export_agent
from hmk8s.domain.spaces import OP_DEPLOY, OP_REMOVE
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES
from hmk8s.k8s import objects
from hmk8s.k8s.config import shipped_backend
from hmk8s.k8s.emulated import apiserver
from hmk8s.k8s.local import images, node

FIREWALL, ENCRYPT = FUNCTION_NAMES.index("firewall"), FUNCTION_NAMES.index("encrypt")
SMALL = CONFIG_NAMES.index("small")
PAYLOAD = b"patient record " * 34  # 510 bytes
CONTROLLER_LABEL = "app.kubernetes.io/name=hmk8s-controller"
# what a ChainController on the node needs of the local backend (the rest are k8s defaults)
LOCAL_BACKEND_KEYS = ("images", "proxy_image", "address", "cpu_scale")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "a local node needs root"
    if not (node.node_dir_default() / "kubelet-1.20.2.gz").is_file():
        return f"no shared kube-node files in {node.node_dir_default()}"
    if shutil.which("kubectl") is None:
        return "no kubectl (the tests read the node as a user does)"
    if not apiserver.available():
        return "no shared kube-apiserver scripts"
    try:
        node.preflight(node.node_dir_default())
    except node.NodeError as err:
        return str(err)
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


def eventually(fn, timeout: float, what: str):
    """Polled once a second: each look runs kubectl or sends requests."""
    return _eventually(fn, timeout, what, every=1.0)


def kubectl(layout: node.Layout, *args: str) -> str:
    done = subprocess.run(
        ["kubectl", "--kubeconfig", str(layout.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_a_node_not_ready_in_time_is_refused_with_the_kubelets_last_error_and_taken_down(
    tmp_path_factory,
):
    """Runs before the module's node is up (the bridge is free): `up` gives the node no time to
    get Ready, names the kubelet's last log line, and leaves nothing behind. (A short root, as
    the module's node has: containerd's socket path must stay under 104 bytes.)"""
    root = tmp_path_factory.mktemp("late")
    with pytest.raises(node.NodeError, match=r"Ready not within 0 s \(last error: .+\)$"):
        node.up(root, ready_timeout_s=0.0)
    layout = node.Layout(root)
    assert node.leftovers(layout, node.NodeState.load(layout)) == []


def test_a_missing_command_and_a_busy_kubelet_port_are_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(node.os, "geteuid", lambda: 0)
    real_which = node.shutil.which
    monkeypatch.setattr(node.shutil, "which", lambda c: None if c == "umoci" else real_which(c))
    with pytest.raises(node.NodeError, match=r"^missing: umoci \(apt-get install umoci\)$"):
        node.preflight(node.node_dir_default())
    monkeypatch.setattr(node.shutil, "which", real_which)
    monkeypatch.setattr(node, "BRIDGE", "hmk8s-absent")  # whether or not a node is up
    with socket.socket() as holder:
        with contextlib.suppress(OSError):  # something already holds it: refused all the same
            holder.bind(("127.0.0.1", node.KUBELET_PORT))
        with pytest.raises(node.NodeError, match=r"^busy: port 10250 \(the kubelet's\) is in use$"):
            node.preflight(node.node_dir_default())


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """The node, up once for the module; down (and checked empty) after it."""
    root = tmp_path_factory.mktemp("node")
    started = time.monotonic()
    args = ("up", str(root), "--usecase", "ml", "--hpa-sync-period", "5s")
    done = run_script("local_cluster.py", root.parent, *args)
    assert done.returncode == 0, done.stderr
    layout = node.Layout(root)
    layout.up_seconds = time.monotonic() - started
    try:
        yield layout
    finally:
        down = run_script("local_cluster.py", root.parent, "down", str(root))
        state = node.NodeState.load(layout)
        assert down.returncode == 0, down.stderr
        assert node.leftovers(layout, state) == []


def test_node_ready_with_proxies_running(up):
    assert up.up_seconds < 240  # the node alone is Ready in about 40 s; images take the rest
    ready = kubectl(up, "get", "node", node.NODE_NAME, "-o", "jsonpath={.status.conditions}")
    assert {"type": "Ready", "status": "True"}.items() <= next(
        c for c in json.loads(ready) if c["type"] == "Ready"
    ).items()
    pods = json.loads(kubectl(up, "get", "pods", "-A", "-o", "json"))["items"]
    proxies = [p for p in pods if p["metadata"]["name"].startswith("proxy")]
    assert len(proxies) == 3
    assert all(p["status"]["phase"] == "Running" for p in proxies)
    assert all(p["spec"]["containers"][0]["image"] == images.image_name("proxy") for p in proxies)
    logs = kubectl(up, "-n", "hmk8s-0", "logs", "deploy/proxy0")
    assert "listening on 0.0.0.0:8080" in logs


def post_through(
    layout: node.Layout, proxy: str, namespace: str, n: int
) -> list[tuple[int, bytes]]:
    ip = kubectl(layout, "-n", namespace, "get", "svc", proxy, "-o", "jsonpath={.spec.clusterIP}")
    answers = []
    for _ in range(n):
        request = urllib.request.Request(f"http://{ip}:8080/records", data=PAYLOAD, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=3) as answer:
                answers.append((answer.status, answer.read()))
        except urllib.error.HTTPError as err:
            answers.append((err.code, b""))
        except urllib.error.URLError:  # refused: the proxy is not ready (its chain is syncing)
            answers.append((0, b""))
    return answers


def test_chain_scales_serves_and_reads_real_cpu(up):
    from hmk8s.k8s.env import KubernetesClusterEnv

    backend = shipped_backend("local")
    backend.update(kubeconfig=str(up.root / "run.kubeconfig"), step_seconds=4)
    env = KubernetesClusterEnv("ml", backend_cfg=backend, start="minimal", episode_steps=50)
    try:
        _, info = env.reset(seed=0)
        assert not info["not_ready"]
        lay = env.params.layout
        deploy = lay.encode(0, OP_DEPLOY, SMALL, FIREWALL, 0)
        _, _, _, _, info = env.step(deploy)
        assert not info["invalid"] and info["api_errors"] == []
        name = objects.instance_name(FIREWALL, SMALL)
        ready = eventually(
            lambda: kubectl(
                up, "-n", "hmk8s-0", "get", "deploy", name, "-o", "jsonpath={.status.readyReplicas}"
            ),
            60,
            "the scaled-up firewall pod ready",
        )
        assert ready == "1"

        eventually(
            lambda: (
                kubectl(
                    up,
                    "-n",
                    "hmk8s-0",
                    "get",
                    "deploy",
                    "proxy0",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                )
                == "1"
            ),
            60,
            "proxy0 ready with its chain",
        )
        answers = post_through(up, "proxy0", "hmk8s-0", 60)
        assert [s for s, _ in answers] == [200] * 60
        # the chain ends at encrypt: AES-GCM output is nonce (12) + ciphertext + tag (16)
        assert all(len(body) == len(PAYLOAD) + 28 and PAYLOAD not in body for _, body in answers)

        noop = lay.noop_index
        for _ in range(3):
            _, _, _, _, info = env.step(noop)
        assert info["assumed"]["cpu_pods"] == 0 and info["assumed"]["latency"] == 0
        obs = env.structured_observation
        assert np.isfinite(np.asarray(obs.instance_util)).all()
        metrics = json.loads(
            kubectl(up, "get", "pods.metrics.k8s.io", "-n", "hmk8s-0", "-o", "json")
        )
        firewall_cpu = [
            m
            for m in metrics["items"]
            if m["metadata"]["labels"].get(objects.FUNCTION) == "firewall"
        ]
        assert firewall_cpu and all(
            m["containers"][0]["usage"]["cpu"].endswith("n") for m in firewall_cpu
        )

        remove = lay.encode(0, OP_REMOVE, SMALL, FIREWALL, 0)
        _, _, _, _, info = env.step(remove)
        assert not info["invalid"] and info["api_errors"] == []
        assert not kubectl(up, "-n", "hmk8s-0", "get", "deploy", "-o", "name").count(name)
    finally:
        env.close()
    left = kubectl(up, "get", "deploy,svc,cm", "-A", "-l", objects.run_selector(None), "-o", "name")
    assert left.strip() == ""


def test_real_hpa_scales_a_loaded_deployment(up):
    """An HPA with a low CPU target on the encrypt Deployment, under traffic, is scaled up by
    kube-controller-manager from the PodMetrics the node writes."""
    from hmk8s.k8s.env import KubernetesClusterEnv

    backend = shipped_backend("local")
    backend.update(kubeconfig=str(up.root / "run.kubeconfig"), step_seconds=2)
    env = KubernetesClusterEnv("ml", backend_cfg=backend, start="minimal", episode_steps=50)
    try:
        env.reset(seed=0)
        name = objects.instance_name(ENCRYPT, CONFIG_NAMES.index("medium"))
        uid = kubectl(up, "-n", "hmk8s-0", "get", "deploy", name, "-o", "jsonpath={.metadata.uid}")
        hpa = objects.autoscaler(env.run_id, ENCRYPT, CONFIG_NAMES.index("medium"), 0.05, 3, uid)
        hpa["metadata"]["namespace"] = "hmk8s-0"
        manifest = up.root / "hpa.json"
        manifest.write_text(json.dumps(hpa))
        kubectl(up, "apply", "-f", str(manifest))

        def scaled() -> bool:
            post_through(up, "proxy0", "hmk8s-0", 20)  # refused until proxy0 has its chain
            return kubectl(
                up, "-n", "hmk8s-0", "get", "deploy", name, "-o", "jsonpath={.spec.replicas}"
            ) not in ("", "1")

        eventually(scaled, 90, "the HPA's scale-up")
        status = json.loads(kubectl(up, "-n", "hmk8s-0", "get", "hpa", name, "-o", "json"))
        assert status["status"]["desiredReplicas"] > 1
    finally:
        env.close()
    # the HPA went with its Deployment (owner reference, the garbage collector)
    eventually(
        lambda: kubectl(up, "-n", "hmk8s-0", "get", "hpa", "-o", "name").strip() == "",
        30,
        "the HPA garbage-collected",
    )


def test_refusals_are_one_line(up, tmp_path):
    busy = run_script("local_cluster.py", tmp_path, "up", str(tmp_path / "second"))
    assert busy.returncode == 2
    assert busy.stderr.startswith("error: busy: network device hmk8s0 exists")
    assert busy.stderr.count("\n") == 1
    missing = run_script(
        "local_cluster.py",
        tmp_path,
        "up",
        str(tmp_path / "third"),
        "--node-files",
        str(tmp_path / "nowhere"),
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: {tmp_path / 'nowhere'}: missing kubelet-1.20.2.gz")
    assert not (tmp_path / "third").exists()


def test_not_root_is_refused(tmp_path, monkeypatch, capsys):
    from hmk8s.k8s.local import cli as local_cli

    monkeypatch.setattr(node.os, "geteuid", lambda: 1000)
    assert local_cli.main(["up", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert err == "error: a local node needs root (it runs containerd, the kubelet and iptables)\n"
    assert not (tmp_path / "n").exists()


def test_image_build_fails_clearly(tmp_path):
    with pytest.raises(node.NodeError, match="no root filesystem"):
        images.build_layout(tmp_path, tmp_path / "absent.tar.xz")


def test_fidelity_records_and_calibrates_on_the_node(up, tmp_path):
    """`scripts/fidelity.py` at a tiny size: two 3-step episodes of ML's load on the node, then
    the calibration (fit on both; each checked against a fit on the other)."""
    out = tmp_path / "fidelity"
    tiny = ["--episodes", "2", "--steps", "3", "--step-seconds", "3", "--out", str(out)]
    measure = run_script("fidelity.py", tmp_path, "measure", str(up.root), "--usecase", "ml", *tiny)
    assert measure.returncode == 0, measure.stderr[-2000:]
    recorded = json.loads((out / "episode-0.json").read_text())
    assert np.asarray(recorded["sent"]).sum() > 0
    assert 0 < recorded["load_scale"] <= 1
    second = json.loads((out / "episode-1.json").read_text())
    assert second["load_scale"] == recorded["load_scale"]  # one scale for the episodes
    assert recorded["start_delays_s"]["medium"]  # measured, creation to Ready
    calibrate = run_script("fidelity.py", tmp_path, "calibrate", str(out))
    assert calibrate.returncode == 0, calibrate.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["held_out"]) == {"episode-0.json", "episode-1.json"}
    assert report["fitted_on"] == ["episode-0.json", "episode-1.json"]
    # episode 1 is predicted with the start-up episode 0 measured (at least the 1 s floor)
    check = report["held_out"]["episode-1.json"]
    assert check["after"]["start_delay_s_sim"]["medium"] == pytest.approx(
        max(1.0, float(np.median(recorded["start_delays_s"]["medium"])))
    )
    pooled = report["cross_validated"]
    assert set(pooled) == {"before", "after"}
    # the same instances over the same steps in both episodes: the pooled mean is their mean
    each = [report["held_out"][e]["before"]["cpu_util_node_mean"] for e in report["fitted_on"]]
    assert pooled["before"]["cpu_util_node_mean"] == pytest.approx(np.mean(each))
    assert (out / "usecase" / "ml-calibrated.yaml").is_file()


def test_sim_to_real_runs_an_agent_the_rulebook_and_the_real_hpa(up, tmp_path):
    """`scripts/sim_to_real.py` at a tiny size: an exported agent (one that holds its
    placement), the rulebook and Kubernetes' HPA each in charge of one 2-step episode on the
    node, beside the simulator's prediction."""
    noop = 243  # ML's last action of 244
    holder = export_agent(rogue_agent(noop), tmp_path / "holder")
    out = tmp_path / "s2r"
    tiny = ["--episodes", "1", "--steps", "2", "--step-seconds", "3", "--out", str(out)]
    agent = ["--agent", f"holder={holder}"]
    done = run_script("sim_to_real.py", tmp_path, str(up.root), "--usecase", "ml", *agent, *tiny)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {"holder", "rulebook", "hpa"}
    assert summary["results"]["holder"]["node"]["changes"] == 0
    assert summary["results"]["holder"]["sim"]["changes"] == 0
    # the same recordings predicted again without the node: the node's columns unchanged
    again = run_script(
        "sim_to_real.py",
        tmp_path,
        "--usecase",
        "ml",
        *agent,
        "--predict-from",
        str(out / "episodes.json"),
        "--out",
        str(tmp_path / "again"),
    )
    assert again.returncode == 0, again.stderr[-2000:]
    repeated = json.loads((tmp_path / "again" / "results.json").read_text())
    for name, policy in summary["results"].items():
        assert repeated["results"][name]["node"] == policy["node"]
        assert repeated["results"][name]["sim"] == policy["sim"]  # the same simulator
    for policy in summary["results"].values():
        assert set(policy["node"]) == {"return", "sla_violation_rate", "pods_mean", "changes"}
        assert policy["node"]["pods_mean"] >= 2  # the minimal start: a pod per chain function
        assert policy["sim"]["pods_mean"] >= 2
    assert "| hpa |" in done.stdout


def operator_pid(pod: str) -> int:
    """The host PID of the operator process in `pod` (its container's /etc/hostname)."""
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{proc}/cmdline").read_bytes()
            host = Path(f"/proc/{proc}/root/etc/hostname").read_text().strip()
        except OSError:
            continue
        if b"hmk8s.control.operator" in cmdline and host == pod:
            return int(proc)
    raise LookupError(f"no operator process in pod {pod}")


def test_the_operator_runs_in_the_cluster_and_hands_over_on_default_leases(up, tmp_path):
    """The controller image on the node: two replicas from deploy/controller/, probes and
    metrics answering, a ChainController acting after its dry run, and a SIGKILLed leader's
    Lease taken over by the standby within 20 s on the default 15/10/2 s timings."""
    from kubernetes import client as k8s

    from hmk8s.control.cluster import ClusterBackend
    from hmk8s.control.lease import lease_name, lease_namespace
    from hmk8s.k8s.client import connect
    from hmk8s.k8s.config import load_cluster_map

    done = run_script("local_cluster.py", tmp_path, "controller", str(up.root), timeout=600)
    assert done.returncode == 0, done.stderr
    pods = json.loads(
        kubectl(up, "-n", "hmk8s-system", "get", "pods", "-l", CONTROLLER_LABEL, "-o", "json")
    )["items"]
    assert len(pods) == 2
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["image"] == images.image_name("controller")
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        ip = pod["status"]["podIP"]
        with urllib.request.urlopen(f"http://{ip}:8081/healthz", timeout=5) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as answer:
            assert b"leader_election_master_status" in answer.read()

    namespaces = ["hmk8s-0", "hmk8s-1", "hmk8s-2"]
    layout = sim.make("ml", {})[1].layout
    agent = rogue_agent(int(layout.encode(1, OP_DEPLOY, SMALL, ENCRYPT, 0)))  # on hmk8s-1
    backend = {k: shipped_backend("local")[k] for k in LOCAL_BACKEND_KEYS}
    clusters = [{"context": "admin", "namespace": ns} for ns in namespaces]
    cmap = load_cluster_map(None, **backend, kubeconfig=str(up.kubeconfig), clusters=clusters)
    # the minimal placement, as `scripts/control.py bootstrap=true` writes it (a dry run cannot)
    ClusterBackend(agent.env_params, agent.usecase, cmap, connect(cmap), bootstrap=True)
    with node.core_api(up) as core:
        sha = agent_configmap(core, "hmk8s-system", agent, tmp_path)
        custom = k8s.CustomObjectsApi(core.api_client)
        args = ("hmk8s.io", "v1alpha1", "hmk8s-system", "chaincontrollers")
        custom.create_namespaced_custom_object(
            *args,
            {
                "apiVersion": "hmk8s.io/v1alpha1",
                "kind": "ChainController",
                "metadata": {"name": "ml"},
                "spec": {
                    "agent": {"configMap": "agent", "paramsSha256": sha},
                    "namespaces": namespaces,
                    "dryRun": True,
                    "stepSeconds": 5,
                    "backend": backend,
                },
            },
        )

        def condition(kind: str) -> dict:
            status = custom.get_namespaced_custom_object(*args, "ml").get("status") or {}
            return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})

        eventually(lambda: condition("Ready").get("status") == "True", 120, "Ready=True")
        name = objects.instance_name(ENCRYPT, SMALL)
        assert name not in kubectl(up, "-n", "hmk8s-1", "get", "deploy", "-o", "name")
        custom.patch_namespaced_custom_object(*args, "ml", {"spec": {"dryRun": False}})
        eventually(
            lambda: name in kubectl(up, "-n", "hmk8s-1", "get", "deploy", "-o", "name"),
            60,
            "the agent's deployment applied once the dry run is off",
        )
        eventually(
            lambda: any(
                e["reason"] == "Applied"
                for e in json.loads(kubectl(up, "-n", "hmk8s-1", "get", "events", "-o", "json"))[
                    "items"
                ]
            ),
            30,
            "an Applied Event on the Deployment",
        )
        custom.patch_namespaced_custom_object(*args, "ml", {"spec": {"paused": True}})
        eventually(
            lambda: (
                (condition("Holding").get("status"), condition("Holding").get("reason"))
                == ("True", "Paused")
            ),
            30,
            "Holding=True, reason=Paused",
        )

        def replicas() -> str:
            return kubectl(
                up, "-n", "hmk8s-1", "get", "deploy", name, "-o", "jsonpath={.spec.replicas}"
            )

        held = replicas()
        coordination = k8s.CoordinationV1Api(core.api_client)

        def lease() -> k8s.V1LeaseSpec:
            return coordination.read_namespaced_lease(
                lease_name(namespaces), lease_namespace(namespaces)
            ).spec

        names = [p["metadata"]["name"] for p in pods]
        leader_pod = next(n for n in names if lease().holder_identity.startswith(n + "_"))
        standby_pod = next(n for n in names if n != leader_pod)
        os.kill(operator_pid(leader_pod), signal.SIGKILL)
        killed = time.time()
        taken = _eventually(
            lambda: (spec := lease()).holder_identity.startswith(standby_pod + "_") and spec,
            30,
            "the standby leads",
            every=0.25,
        )
        handover = taken.acquire_time.timestamp() - killed  # the server's clock is this machine's
        assert handover < 20, handover
        eventually(
            lambda: (
                condition("Ready").get("status") == "True"
                and condition("Holding").get("reason") == "Paused"
            ),
            60,
            "the new leader ready and still paused",
        )
        time.sleep(10)  # two periods of the new leader: paused, it adopts and applies nothing
        assert replicas() == held
        custom.delete_namespaced_custom_object(*args, "ml")
    print(f"hand-over after SIGKILL: {handover:.1f} s")
