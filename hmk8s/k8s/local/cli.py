"""`scripts/local_cluster.py`: a real one-machine Kubernetes cluster, up and down.

    python scripts/local_cluster.py up DIR [--usecase ml] [--num-envs 1]
    python scripts/local_cluster.py controller DIR
    python scripts/local_cluster.py down DIR

`up` starts the node (`hmk8s.k8s.local.node`), builds and imports the data-plane images, and sets
the use case's namespaces up as `scripts/setup_clusters.py` does (ServiceAccounts, Roles, the
proxies) plus what the function pods read (the firewall's rules, one AES-GCM key shared by every
namespace). It writes `DIR/kubeconfig` (admin) and `DIR/run.kubeconfig` (the run's
ServiceAccounts) and prints the training command. `controller` builds the operator's image,
imports it and applies `deploy/controller/` (the ChainController CRD, RBAC, two replicas) with
that image, and waits until both replicas answer their readiness probe. `down` leaves nothing
behind, and says what it could not remove (exit 1). Refusals are one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

import yaml

from hmk8s.domain.usecases import UseCase, UseCaseError, load_usecase
from hmk8s.k8s import objects, setup
from hmk8s.k8s.client import ClusterAccessError
from hmk8s.k8s.config import shipped_backend
from hmk8s.k8s.emulated.apiserver import REPO
from hmk8s.k8s.local import images, node
from hmk8s.shell.exit import EXIT_RUN_FAILED, refuse

FUNCTIONS_MANIFEST = REPO / "deploy" / "functions.yaml"
CONTROLLER_MANIFESTS = [REPO / "deploy" / "controller" / f for f in ("crd", "rbac", "controller")]
CONTROLLER_NAMESPACE = "hmk8s-system"


def firewall_rules() -> str:
    """The firewall's rules as `deploy/functions.yaml` ships them (one source for both)."""
    for doc in yaml.safe_load_all(FUNCTIONS_MANIFEST.read_text()):
        if (
            doc
            and doc.get("kind") == "ConfigMap"
            and doc["metadata"]["name"] == objects.RULES_CONFIGMAP
        ):
            return doc["data"]["rules.json"]
    raise node.NodeError(f"{FUNCTIONS_MANIFEST}: no {objects.RULES_CONFIGMAP} ConfigMap")


def function_files(namespace: str, rules: str, key_hex: str) -> list[dict]:
    """What the function pods of a namespace mount: the firewall's rules and the AES key."""
    labels = {"app.kubernetes.io/part-of": "hmk8s"}
    meta = {"namespace": namespace, "labels": labels}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": objects.RULES_CONFIGMAP, **meta},
            "data": {"rules.json": rules},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": objects.KEY_SECRET, **meta},
            "stringData": {"key": key_hex},
        },
    ]


def set_up_usecase(layout: node.Layout, usecase: UseCase, num_envs: int) -> list[str]:
    """Namespaces, identities, proxies and function files of a run on the node; the run's
    kubeconfig goes to `DIR/run.kubeconfig`."""
    backend = shipped_backend("local")
    plan = setup.plan(backend, usecase, num_envs)
    admin = setup.Admin(layout.kubeconfig, lambda _: "admin")
    try:
        lines = setup.setup(admin, plan)
        rules, key = firewall_rules(), secrets.token_hex(32)
        for item in plan.namespaces:
            for doc in function_files(item.namespace, rules, key):
                lines.append(f"{setup.apply(admin, item.context, doc):8s} {setup.describe(doc)}")
        run_kubeconfig = layout.root / "run.kubeconfig"
        run_kubeconfig.write_text(
            yaml.safe_dump(setup.kubeconfig(admin, plan, 24 * 3600), sort_keys=False)
        )
        os.chmod(run_kubeconfig, 0o600)
    finally:
        admin.close()
    return lines + setup.env_lines(plan)


def pods_running(layout: node.Layout) -> bool:
    """Every pod of the node is Running (the proxies wait for a chain to be ready, not to run)."""
    with node.core_api(layout) as api:
        phases = {p.status.phase for p in api.list_pod_for_all_namespaces().items}
    return phases == {"Running"}


def up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    usecase = load_usecase(args.usecase)
    layout = node.up(args.dir, node_files=args.node_files, hpa_sync_period=args.hpa_sync_period)
    try:
        names = images.build_and_import(layout, args.node_files or node.node_dir_default())
        lines = set_up_usecase(layout, usecase, args.num_envs)
        node.wait_for("the proxies' pods Running", lambda: pods_running(layout), 90)
    except BaseException:
        node.down(layout.root)
        raise
    print("\n".join(lines))
    print(f"images: {', '.join(names)}")
    print(f"node {node.NODE_NAME} Ready; up in {time.monotonic() - started:.0f} s")
    print(f"admin:  export KUBECONFIG={layout.kubeconfig}")
    print(
        f"train:  python scripts/train.py usecase={usecase.name} backend=local "
        f"backend.kubeconfig={layout.root / 'run.kubeconfig'} num_envs={args.num_envs}"
    )
    print(f"down:   python scripts/local_cluster.py down {layout.root}")
    return 0


def controller_manifests(image: str) -> list[dict]:
    """`deploy/controller/`'s CRD, RBAC and Deployment, the Deployment on `image`."""
    docs = [
        doc
        for path in CONTROLLER_MANIFESTS
        for doc in yaml.safe_load_all(path.with_suffix(".yaml").read_text())
        if doc
    ]
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return sorted(docs, key=lambda doc: doc["kind"] != "Namespace")  # namespaces first


def apply_new(layout: node.Layout, docs: list[dict]) -> list[str]:
    """Create each object; one that exists already is left as it is (and said so)."""
    from kubernetes import utils

    lines = []
    with node.core_api(layout) as core:
        for doc in docs:
            try:
                utils.create_from_dict(core.api_client, doc)
                lines.append(f"created  {setup.describe(doc)}")
            except utils.FailToCreateError as err:
                refused = [e for e in err.api_exceptions if e.status != 409]
                if refused:
                    raise node.NodeError(
                        f"{setup.describe(doc)}: HTTP {refused[0].status} {refused[0].reason}"
                    ) from None
                lines.append(f"exists   {setup.describe(doc)}")
    return lines


def controller_ready(layout: node.Layout) -> bool:
    with node.core_api(layout) as core:
        from kubernetes import client

        found = client.AppsV1Api(core.api_client).list_namespaced_deployment(CONTROLLER_NAMESPACE)
    return any(
        (d.status.ready_replicas or 0) == d.spec.replicas
        for d in found.items
        if d.metadata.name == "hmk8s-controller"
    )


def controller(args: argparse.Namespace) -> int:
    started = time.monotonic()
    layout = node.Layout(args.dir)
    if not layout.state.exists():
        raise node.NodeError(f"no node in {layout.root} (run up first)")
    image = images.build_and_import_controller(layout, args.node_files or node.node_dir_default())
    built = time.monotonic() - started
    lines = apply_new(layout, controller_manifests(image))
    node.wait_for("the controller's replicas ready", lambda: controller_ready(layout), 180)
    print("\n".join(lines))
    print(f"image:  {image} (built and imported in {built:.0f} s)")
    took = time.monotonic() - started
    print(f"controller: 2 replicas ready in {CONTROLLER_NAMESPACE}; {took:.0f} s")
    print(
        "declare it: deploy/controller/chaincontroller.yaml (its agent ConfigMap first), "
        f"kubectl --kubeconfig {layout.kubeconfig} apply -f it"
    )
    return 0


def down(args: argparse.Namespace) -> int:
    left = node.down(args.dir)
    if left:
        return refuse(f"left behind: {', '.join(left)}", EXIT_RUN_FAILED)
    print(f"down: nothing of {args.dir} is left")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "controller", "down"])
    parser.add_argument("dir", type=Path, help="the node's directory (state, logs, kubeconfigs)")
    parser.add_argument("--usecase", default="ml", help="use case whose namespaces to set up")
    parser.add_argument("--num-envs", type=int, default=1, help="envs of the run to set up")
    parser.add_argument(
        "--node-files", type=Path, default=None, help="shared kube-node directory (binaries)"
    )
    parser.add_argument(
        "--hpa-sync-period",
        default=node.HPA_SYNC_PERIOD,
        help="the HPA controller's sync period (kube-controller-manager's default: 15s)",
    )
    args = parser.parse_args(argv)
    try:
        if args.num_envs < 1:
            raise node.NodeError("--num-envs must be at least 1")
        return {"up": up, "controller": controller, "down": down}[args.action](args)
    except (node.NodeError, UseCaseError, ClusterAccessError) as err:
        return refuse(err)
    except KeyboardInterrupt:
        print("interrupted: the node was taken down", file=sys.stderr)
        return 130


def entry() -> None:
    raise SystemExit(main())
