"""Setting the backend up: bad input fails before training starts, manifests are valid, the
training core does not need the kubernetes client, and gymnasium ids reach the backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import kubernetes_validate
import pytest
import yaml

import hmk8s  # noqa: F401  (registers the gymnasium ids)
from hmk8s.domain.usecases import load_usecase
from hmk8s.k8s import objects
from hmk8s.k8s.client import ClusterAccessError, ClusterClient, new_api_client
from hmk8s.k8s.config import CONFIG_PATH, load_cluster_map
from hmk8s.k8s.emulated.harness import emulation
from hmk8s.k8s.emulated.twin import TwinClock
from hmk8s.k8s.objects import Hop

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.30"
OLDEST_SCHEMA = (
    "1.25"  # the oldest kubernetes-validate ships; the manifests use 1.20's API versions
)
KINDS = ("apps/v1/deployments", "v1/services", "v1/configmaps")


def labelled(clusters) -> list[dict]:
    selector = objects.run_selector(None)
    return [o for kind in KINDS for o in clusters.objects(kind, selector=selector)]


@pytest.fixture(scope="module")
def emu():
    with emulation("ml", {"start": "minimal", "episode_steps": 5}) as e:
        yield e


def _clusters(cmap, **change):
    first = cmap.clusters[0].model_copy(update=change)
    return (first, *cmap.clusters[1:])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "cannot read"),
        ("directory", "cannot read"),
        ("garbage", "not a usable kubeconfig"),
        ("context", "no context 'nope'"),
        ("unreachable", "API server unreachable"),
    ],
)
def test_bad_kubeconfig_fails_before_anything_is_written(emu, tmp_path, case, message):
    overrides: dict = {}
    if case == "missing":
        overrides["kubeconfig"] = str(tmp_path / "absent")
    elif case == "directory":
        overrides["kubeconfig"] = str(tmp_path)
    elif case == "garbage":
        (tmp_path / "kc").write_text("clusters: [this is not: a kubeconfig")
        overrides["kubeconfig"] = str(tmp_path / "kc")
    elif case == "context":
        overrides["clusters"] = _clusters(emu.cmap, context="nope")
    else:
        doc = yaml.safe_load(emu.kubeconfig.read_text())
        doc["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # discard port: closed
        (tmp_path / "kc").write_text(yaml.safe_dump(doc))
        overrides["kubeconfig"] = str(tmp_path / "kc")
        overrides["api"] = emu.cmap.api.model_copy(
            update={"max_attempts": 2, "backoff_base_s": 0.01, "timeout_s": 1.0}
        )
    with pytest.raises(ClusterAccessError, match=message):
        emu.make_env(**overrides)
    assert labelled(emu.clusters) == []


def test_namespace_without_permission_is_named():
    with emulation("ml", forbidden_namespaces=["hmk8s-1"]) as emu:
        with pytest.raises(ClusterAccessError, match=r"namespace 'hmk8s-1'.*HTTP 403.*rbac"):
            emu.make_env()
        assert labelled(emu.clusters) == []


def test_absent_metrics_api_is_named():
    with emulation("ml", metrics_api=False) as emu:
        with pytest.raises(ClusterAccessError, match=r"metrics\.k8s\.io API is absent"):
            emu.make_env()
        assert labelled(emu.clusters) == []


def test_gymnasium_id_drives_the_k8s_backend(emu):
    env = gym.make(
        "hmk8s/ML-v0",
        backend="k8s",
        backend_cfg=emu.cmap,
        clock=TwinClock(emu.twin),
        start="minimal",
        episode_steps=3,
    )
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["action_mask"].any()
    truncated = False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(env.unwrapped.params.layout.noop_index)
        assert env.observation_space.contains(obs) and reward == reward and not terminated
        assert info["api_errors"] == []
    assert labelled(emu.clusters)
    env.close()
    assert labelled(emu.clusters) == []


def test_training_core_imports_without_the_kubernetes_client():
    code = (
        "import sys\n"
        "sys.modules['kubernetes'] = None\n"  # any import of it now fails
        "import hmk8s, hmk8s.envs, hmk8s.sim, hmk8s.envs.spec, hmk8s.train.anakin.loop\n"
        "import hmk8s.k8s, hmk8s.k8s.config, hmk8s.k8s.objects, hmk8s.k8s.env\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_importing_the_agents_loads_no_environment_and_gym_make_still_finds_one():
    """Registration names the env by its path: `import hmk8s.agents` loads neither the gym env
    nor the simulator's env module, and `gym.make` imports them on first use."""
    code = (
        "import sys, hmk8s.agents\n"
        "print(sorted(m for m in ('hmk8s.envs.gym_env', 'hmk8s.sim.env') if m in sys.modules))\n"
        "import gymnasium as gym\n"
        "print(type(gym.make('hmk8s/ML-v0').unwrapped).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "SimClusterEnv"]


def _manifests() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted((ROOT / "deploy").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.mark.parametrize(
    ("name", "doc"), _manifests(), ids=lambda v: v if isinstance(v, str) else v["metadata"]["name"]
)
def test_deploy_manifests_are_valid(name, doc):
    for version in (OLDEST_SCHEMA, K8S_VERSION):
        kubernetes_validate.validate(doc, version, strict=True)


def test_generated_objects_are_valid():
    cmap = load_cluster_map()
    uc = load_usecase("stream")
    docs = [objects.deployment(cmap, uc, "r1", f, c, 2) for f in range(3) for c in range(3)]
    docs += [objects.service(cmap, "r1", f, c) for f in range(3) for c in range(3)]
    docs.append(objects.chain_configmap(cmap, "r1", 4, 2, (Hop(0, 1, 2), Hop(2, None, None))))
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_function_template_matches_what_the_backend_creates():
    shipped = list(yaml.safe_load_all((ROOT / "deploy" / "function-template.yaml").read_text()))
    cmap, uc = load_cluster_map(), load_usecase("ml")
    assert shipped == [
        objects.deployment(cmap, uc, "example", 2, 1, 1),
        objects.service(cmap, "example", 2, 1),
    ]


def test_role_grants_only_what_the_backend_uses():
    role = next(d for _, d in _manifests() if d["kind"] == "Role")
    granted = {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    crud = ("get", "list", "create", "patch", "delete")
    used = {("apps", "deployments", v) for v in crud}
    used |= {("", r, v) for r in ("services", "configmaps") for v in crud}
    used |= {("", "services/proxy", "get"), ("metrics.k8s.io", "pods", "list")}
    used |= {
        ("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")
    }  # control.py
    assert granted == used
    binding = next(d for _, d in _manifests() if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["kind"] == "Role"  # namespace-scoped, no ClusterRole
    assert not any(d["kind"].startswith("Cluster") for _, d in _manifests())


def test_namespaces_holding_another_runs_objects_are_refused(emu):
    ref = emu.cmap.clusters[2]
    client = ClusterClient(new_api_client(emu.kubeconfig, ref.context), ref, emu.cmap)
    client.apply(objects.deployment(emu.cmap, emu.usecase, "ghost", 0, 0, 1), exists=False)
    with pytest.raises(ClusterAccessError, match=r"other runs: ghost \(1 objects\)"):
        emu.make_env()
    client.delete("Deployment", objects.instance_name(0, 0))
    env = emu.make_env()
    env.close()
    assert labelled(emu.clusters) == []


def test_proxies_manifest_matches_what_setup_creates():
    shipped = [d for d in yaml.safe_load_all((ROOT / "deploy" / "proxies.yaml").read_text()) if d]
    cmap, uc = load_cluster_map(), load_usecase("ml")
    assert shipped == [
        doc
        for p, proxy in enumerate(uc.proxies)
        for doc in objects.proxy_objects(cmap, uc, p, f"hmk8s-{proxy.home}")
    ]


def test_setup_grants_the_shipped_role_in_every_namespace_of_a_run():
    """Rules come from deploy/rbac.yaml; each namespace also binds its context's identity (the
    ServiceAccount of env 0's namespace), so one token serves every env on a cluster."""
    from hmk8s.k8s import setup

    shipped = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]
    plan = setup.plan(yaml.safe_load(CONFIG_PATH.read_text()), load_usecase("stream"), 3)
    assert [(n.namespace, n.identity) for n in plan.namespaces if n.context == "hmk8s-1"] == [
        ("hmk8s-1-e0", "hmk8s-1-e0"),
        ("hmk8s-1-e1", "hmk8s-1-e0"),
        ("hmk8s-1-e2", "hmk8s-1-e0"),
    ]
    homes = [p.home for p in load_usecase("stream").proxies]
    for item in plan.namespaces:
        k = int(item.namespace.split("-")[1])
        assert item.proxies == tuple(p for p, h in enumerate(homes) if h == k)
        docs = setup.manifests(item, plan.cmap, plan.usecase)
        role = next(d for d in docs if d["kind"] == "Role")
        assert role["rules"] == shipped[1]["rules"]
        binding = next(d for d in docs if d["kind"] == "RoleBinding")
        assert {s["namespace"] for s in binding["subjects"]} == {item.namespace, item.identity}
        assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in docs} == {
            item.namespace
        }
