"""The k8s backend on a real API server (the session's kube-apiserver, tests/conftest.py): clusters
set up by scripts/setup_clusters.py, least privilege through minted ServiceAccount tokens,
pre-flight errors, API robustness, and training runs by scripts/train.py, the twin playing
kubelet, the controllers, metrics-server and Prometheus, that leave nothing behind however they
end."""

from __future__ import annotations

import importlib.util
import json
import secrets
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from script_runs import start_script

from hmk8s.domain.usecases import load_usecase
from hmk8s.k8s import objects, setup
from hmk8s.k8s.client import ClusterAccessError, ClusterClient, new_api_client
from hmk8s.k8s.config import CONFIG_PATH, ClusterRef, load_cluster_map
from hmk8s.k8s.emulated.apiclusters import ApiClusters
from hmk8s.k8s.emulated.harness import on_server
from hmk8s.k8s.emulated.twin import TwinPool

ROOT = Path(__file__).resolve().parents[1]
RUN_KINDS = ("apps/v1/deployments", "v1/services", "v1/configmaps")
ML = load_usecase("ml")


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backend_file(folder: Path, prefix: str) -> Path:
    """The shipped backend config with namespaces `<prefix>0`, `<prefix>1`, `<prefix>2`."""
    data = yaml.safe_load(CONFIG_PATH.read_text())
    data["clusters"] = [{**c, "namespace": f"{prefix}{k}"} for k, c in enumerate(data["clusters"])]
    path = folder / "backend.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_objects(admin: ApiClusters, namespaces: list[str] | None = None) -> list[dict]:
    """Every object labelled managed-by=hmk8s (in `namespaces`, else anywhere)."""
    selector = objects.run_selector(None)
    return [
        o
        for kind in RUN_KINDS
        for ns in namespaces or [None]
        for o in admin.objects(kind, ns, selector)
    ]


WRITABLE_KINDS = (
    *RUN_KINDS,
    "v1/namespaces",
    "v1/serviceaccounts",
    "v1/events",
    "v1/pods",
    "rbac.authorization.k8s.io/v1/roles",
    "rbac.authorization.k8s.io/v1/rolebindings",
    "coordination.k8s.io/v1/leases",
)


def stored_objects(admin: ApiClusters) -> set[tuple[str, str, str, str]]:
    """(kind, namespace, name, resourceVersion) of every object a run could write. etcd's
    revision alone would not do: the API server's compaction bumps it every 5 minutes."""
    return {
        (
            kind,
            o["metadata"].get("namespace", ""),
            o["metadata"]["name"],
            o["metadata"]["resourceVersion"],
        )
        for kind in WRITABLE_KINDS
        for o in admin.objects(kind, None)
    }


@pytest.fixture(scope="module")
def admin(apiserver):
    with ApiClusters(apiserver.kubeconfig, apiserver.context, []) as clusters:
        yield clusters


def test_setup_is_planned_idempotent_least_privilege_and_torn_down(
    apiserver, admin, tmp_path, capsys
):
    main = script("setup_clusters").main
    st = f"st{secrets.token_hex(2)}"  # fresh names, also on a server kept between sessions
    backend = backend_file(tmp_path, f"{st}-")
    kc = tmp_path / "run.kubeconfig"
    common = [
        "--backend",
        str(backend),
        "--num-envs",
        "2",
        "--kubeconfig",
        str(apiserver.kubeconfig),
    ]
    common += ["--admin-context", apiserver.context]
    namespaces = [f"{st}-{k}-e{i}" for i in range(2) for k in range(3)]
    expected = {
        name
        for k, i in ((k, i) for i in range(2) for k in range(3))
        for name in (
            f"Namespace {st}-{k}-e{i}",
            *(f"{kind} {st}-{k}-e{i}/hmk8s-backend" for kind in ("ServiceAccount", "Role")),
            f"RoleBinding {st}-{k}-e{i}/hmk8s-backend",
            f"Deployment {st}-{k}-e{i}/proxy{k}",  # ML's proxy k lives on cluster k
            f"Service {st}-{k}-e{i}/proxy{k}",
        )
    }

    assert main([*common, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {line.removeprefix("would setup ") for line in lines[:-2]} == expected
    assert lines[-1] == (
        f"env 1: cluster 0 = hmk8s-0/{st}-0-e1, cluster 1 = hmk8s-1/{st}-1-e1, "
        f"cluster 2 = hmk8s-2/{st}-2-e1"
    )
    assert admin.request("GET", f"/api/v1/namespaces/{st}-0-e0")[0] == 404  # nothing made

    assert main([*common, "--write-kubeconfig", str(kc)]) == 0
    made = capsys.readouterr().out.splitlines()
    assert {line.removeprefix("created  ") for line in made[:36]} == expected
    role = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{st}-1-e1/roles/hmk8s-backend"
    version = admin.request("GET", role)[1]["metadata"]["resourceVersion"]

    assert main([*common, "--write-kubeconfig", str(kc)]) == 0  # again: nothing changes
    again = capsys.readouterr().out.splitlines()[:36]
    assert not [line for line in again if line.startswith("created")]
    assert sum(line.startswith("exists   Namespace") for line in again) == 6
    assert admin.request("GET", role)[1]["metadata"]["resourceVersion"] == version

    # the written contexts act as ServiceAccounts: cluster 1's reaches its two namespaces only
    cmap = load_cluster_map(backend)
    for ns, allowed in ((f"{st}-1-e0", True), (f"{st}-1-e1", True), (f"{st}-0-e0", False)):
        ref = ClusterRef(context="hmk8s-1", namespace=ns)
        client = ClusterClient(new_api_client(kc, "hmk8s-1"), ref, cmap)
        if allowed:
            assert [d.metadata.name for d in client.list("Deployment", "")] == ["proxy1"]
        else:
            with pytest.raises(ApiException) as denied:
                client.list("Deployment", "")
            assert denied.value.status == 403

    assert main(["teardown", *common]) == 0
    gone = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("deleted") for line in gone) == 36
    for ns in namespaces:
        assert admin.objects("v1/serviceaccounts", ns) == []
        assert admin.objects("apps/v1/deployments", ns) == []
        found = admin.request("GET", f"/api/v1/namespaces/{ns}")[1]
        assert found["metadata"].get("deletionTimestamp")  # terminating (no controller here)


def test_preflight_and_least_privilege_on_a_real_server(apiserver, admin, tmp_path):
    with on_server(apiserver, "ml", {"start": "minimal", "episode_steps": 3}) as emu:
        names = [c.namespace for c in emu.cmap.clusters]
        absent = f"{names[0]}-absent"
        clusters = (emu.cmap.clusters[0], ClusterRef(context="hmk8s-1", namespace=absent))
        before = stored_objects(admin)
        with pytest.raises(ClusterAccessError, match=f"namespace '{absent}' does not exist"):
            emu.make_env(clusters=(*clusters, emu.cmap.clusters[2]))
        assert stored_objects(admin) == before  # not a single write

        # a namespace gone during a run stops it instead of inventing readings
        ref = ClusterRef(context="hmk8s-0", namespace=absent)
        gone = ClusterClient(new_api_client(emu.kubeconfig, "hmk8s-0"), ref, emu.cmap)
        with pytest.raises(ClusterAccessError, match="does not exist"):
            gone.apply(objects.service(emu.cmap, "r", 0, 0))

        # least privilege: the tokens setup_clusters mints, one RoleBinding missing, then all
        backend = {**emu.cmap.model_dump(mode="json"), "kubeconfig": None}
        plan = setup.plan(backend, ML, 1)
        access = setup.Admin(apiserver.kubeconfig, lambda _: apiserver.context)
        setup.setup(access, plan)
        kc = tmp_path / "sa.kubeconfig"
        kc.write_text(yaml.safe_dump(setup.kubeconfig(access, plan, 600)))
        binding = setup.rbac_manifests(names[1], names[1])[2]
        assert setup.delete(access, "hmk8s-1", binding) == "deleted"
        with pytest.raises(ClusterAccessError, match=rf"namespace '{names[1]}'.*HTTP 403.*rbac"):
            emu.make_env(kubeconfig=str(kc))
        setup.setup(access, plan)
        access.close()
        env = emu.make_env(kubeconfig=str(kc))
        lay = env.params.layout
        _, info = env.reset(seed=0)
        for action in (lay.encode(1, 2, 0, 2, 1), lay.noop_index, lay.noop_index):
            _, _, _, _, info = env.step(action)
            assert info["api_errors"] == []
        assert len(run_objects(admin, names)) > 0
        assert env.close().clean
        assert run_objects(admin, names) == []


def test_deletes_do_not_parse_and_a_rotated_token_is_reread(apiserver, tmp_path):
    with on_server(apiserver, "ml") as emu:
        ns = emu.cmap.clusters[0].namespace
        admin_client = ClusterClient(
            new_api_client(emu.kubeconfig, "hmk8s-0"), emu.cmap.clusters[0], emu.cmap
        )
        admin_client.apply(objects.service(emu.cmap, "r", 0, 0), exists=False)
        # the 1.20 server answers a Service DELETE with a Status, not a Service
        assert admin_client.delete("Service", objects.instance_name(0, 0)) is True
        assert admin_client.delete("Service", objects.instance_name(0, 0)) is False

        backend = {**emu.cmap.model_dump(mode="json"), "kubeconfig": None}
        plan = setup.plan(backend, ML, 1)
        access = setup.Admin(apiserver.kubeconfig, lambda _: apiserver.context)
        setup.setup(access, plan)
        token = setup.mint_token(access, "hmk8s-0", ns, 600)
        access.close()
        doc = yaml.safe_load(emu.kubeconfig.read_text())
        token_file = tmp_path / "token"
        doc["users"] = [{"name": doc["users"][0]["name"], "user": {"tokenFile": str(token_file)}}]
        kc = tmp_path / "projected.kubeconfig"
        kc.write_text(yaml.safe_dump(doc))

        token_file.write_text("expired-token")
        client = ClusterClient(
            new_api_client(kc, "hmk8s-0"), emu.cmap.clusters[0], emu.cmap, kubeconfig=kc
        )
        token_file.write_text(token)  # rotated on disk: the 401 makes the client read it
        assert [d.metadata.name for d in client.list("Deployment", "")] == ["proxy0"]
        assert client.retrier.stats.attempts == 2
        token_file.write_text("revoked-token")
        stale = ClusterClient(
            new_api_client(kc, "hmk8s-0"), emu.cmap.clusters[0], emu.cmap, kubeconfig=kc
        )
        with pytest.raises(ClusterAccessError, match=r"HTTP 401\) after re-reading"):
            stale.list("Deployment", "")
        assert len(client.list("Deployment", "")) == 1  # its token was read already


# -- training runs ----------------------------------------------------------------------------

RUN = [
    "usecase=ml",
    "heuristic=true",
    "backend=k8s",
    "num_envs=4",
    "env.start=minimal",
    "env.episode_steps=4",
    "agent.hidden=[16]",
    "agent.batch_size=4",
    "agent.learning_starts=4",
    "log.tensorboard=false",
    "log.progress=false",
    "checkpoint.enabled=false",
    "backend.step_seconds=0.2",
    "backend.ready_timeout_s=20",
    "backend.poll_interval_s=0.05",
    "backend.latency.source=prometheus",
]
ENVS = [f"hmk8s-{k}-e{i}" for i in range(4) for k in range(3)]


@pytest.fixture(scope="module")
def prepared(apiserver, admin, tmp_path_factory):
    """The shipped map's namespaces for 4 envs, set up by the script, and a free-running twin
    pool playing them; (run overrides, folder, JAX cache)."""
    folder = tmp_path_factory.mktemp("k8s-runs")
    kc = folder / "run.kubeconfig"
    main = script("setup_clusters").main
    args = ["--num-envs", "4", "--kubeconfig", str(apiserver.kubeconfig)]
    assert main([*args, "--admin-context", apiserver.context, "--write-kubeconfig", str(kc)]) == 0
    cmap = load_cluster_map()
    base = [c.namespace for c in cmap.clusters]
    stop = threading.Event()
    with ApiClusters(apiserver.kubeconfig, apiserver.context, base) as clusters:
        pool = TwinPool(clusters, ML, cmap, {"start": "minimal"})
        thread = threading.Thread(target=pool.run, args=(0.05, stop), daemon=True)
        thread.start()
        overrides = [
            *RUN,
            f"backend.kubeconfig={kc}",
            f"backend.latency.prometheus_url={clusters.prometheus_url}",
        ]
        yield overrides, folder, folder / "jax-cache"
        stop.set()
        thread.join(10)


def wait_until_placed(admin: ApiClusters, proc, timeout_s: float = 180.0) -> dict[str, set]:
    """Poll (as `kubectl get deploy,svc,cm -n <ns>` would) until every env namespace holds a
    Deployment, a Service and a ConfigMap of the run; what each holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        held = {ns: set() for ns in ENVS}
        for o in run_objects(admin):
            if o["metadata"]["namespace"] in held:
                held[o["metadata"]["namespace"]].add(o["kind"])
        by_env = [set().union(*(held[f"hmk8s-{k}-e{i}"] for k in range(3))) for i in range(4)]
        if all(kinds == {"Deployment", "Service", "ConfigMap"} for kinds in by_env):
            return held
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    raise AssertionError(f"the run placed nothing in time: {proc.communicate()[1][-2000:]}")


def test_training_after_setup_clusters_runs_and_cleans_up(prepared, admin):
    overrides, folder, cache = prepared
    run_dir = folder / "normal"
    proc = start_script(
        "train.py", folder, *overrides, "total_steps=8", f"run_dir={run_dir}", cache=cache
    )
    try:
        wait_until_placed(admin, proc)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 8 and summary["cleanup_errors"] == []
    assert summary["env_failures"] == [0, 0, 0, 0]
    assert run_objects(admin) == []


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_training_run_leaves_nothing(prepared, admin, how):
    overrides, folder, cache = prepared
    run_dir = folder / how.name
    proc = start_script(
        "train.py", folder, *overrides, "total_steps=100000", f"run_dir={run_dir}", cache=cache
    )
    try:
        wait_until_placed(admin, proc)
        proc.send_signal(how)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # either signal stops the run the same way: one line, 128 + the signal, a summary saying so
    assert proc.returncode == 128 + how, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"stopped by {how.name}")
    assert json.loads((run_dir / "summary.json").read_text())["signal"] == how.name
    assert run_objects(admin) == []


def test_a_run_with_a_missing_namespace_creates_nothing(apiserver, admin, prepared, tmp_path):
    overrides, folder, cache = prepared
    admin_contexts = ApiClusters(apiserver.kubeconfig, apiserver.context, ["hmk8s-0-e0"] * 3)
    kc = admin_contexts.kubeconfig(tmp_path / "admin.kubeconfig")
    admin_contexts.close()
    before = stored_objects(admin)
    done = start_script(
        "train.py",
        folder,
        *[o for o in overrides if not o.startswith(("num_envs=", "backend.kubeconfig="))],
        "num_envs=5",  # env 4's namespaces were never set up
        f"backend.kubeconfig={kc}",
        "total_steps=10",
        f"run_dir={tmp_path / 'run'}",
        cache=cache,
    )
    _, err = done.communicate(timeout=240)
    assert done.returncode == 2
    assert err.strip().splitlines()[-1] == (
        "error: context 'hmk8s-0', namespace 'hmk8s-0-e4': namespace 'hmk8s-0-e4' does not "
        "exist; create it (scripts/setup_clusters.py)"
    )
    assert stored_objects(admin) == before  # not a single write
