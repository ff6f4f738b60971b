"""Prepare clusters for a run, and undo it: namespaces, least-privilege access, proxies.

For a cluster map and `num_envs`, every namespace the run will use (named as
`hmk8s.k8s.config.env_cluster_maps` names them: `<namespace>-e<i>` with several envs) gets
`deploy/rbac.yaml`'s ServiceAccount, Role and RoleBinding (its rules are read from that file,
never restated here) and the proxies homed on its cluster. Each context of the map gets one
identity: the ServiceAccount of its first namespace, bound in every namespace of that context,
so one kubeconfig context serves all the envs' namespaces on a cluster and nothing else.
Everything is created or patched (running it twice changes nothing); `teardown` deletes what
setup made, namespaces only when setup created them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hmk8s.domain.usecases import UseCase
from hmk8s.k8s import objects
from hmk8s.k8s.client import discard, new_api_client
from hmk8s.k8s.config import ClusterMap, env_cluster_maps, load_cluster_map, split_backend

RBAC_PATH = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
CREATED_BY = "app.kubernetes.io/created-by"
SETUP = "hmk8s-setup"


@dataclass(frozen=True)
class NamespacePlan:
    """One namespace of one cluster (`context`): who acts there and which proxies live there."""

    context: str
    namespace: str
    identity: str  # namespace of the ServiceAccount the context's token belongs to
    proxies: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    namespaces: tuple[NamespacePlan, ...]
    envs: tuple[tuple[tuple[str, str], ...], ...]  # per env, per cluster: (context, namespace)
    cmap: ClusterMap  # env 0's map: kubeconfig, proxy names, ports and image
    usecase: UseCase  # the proxies' timeout and measurement window

    def identities(self) -> dict[str, str]:
        """Context -> namespace of its ServiceAccount."""
        return {n.context: n.identity for n in self.namespaces}


def plan(backend: Mapping[str, Any], usecase: UseCase, num_envs: int) -> Plan:
    """What a run of `num_envs` envs with this backend config needs, namespace by namespace."""
    data, actor = split_backend(backend)
    maps = [
        load_cluster_map(m) for m in env_cluster_maps(data, num_envs, actor.get("cluster_sets"))
    ]
    for cmap in maps:
        cmap.check_against(usecase)
    homes = [p.home for p in usecase.proxies]
    first: dict[str, str] = {}
    planned: dict[tuple[str, str], NamespacePlan] = {}
    for cmap in maps:
        for k, ref in enumerate(cmap.clusters):
            identity = first.setdefault(ref.context, ref.namespace)
            proxies = tuple(p for p, home in enumerate(homes) if home == k)
            planned.setdefault(
                (ref.context, ref.namespace),
                NamespacePlan(ref.context, ref.namespace, identity, proxies),
            )
    envs = tuple(tuple((r.context, r.namespace) for r in m.clusters) for m in maps)
    return Plan(tuple(planned.values()), envs, maps[0], usecase)


def rbac_manifests(namespace: str, identity: str) -> list[dict]:
    """deploy/rbac.yaml for `namespace`, its RoleBinding also naming the context's identity."""
    docs = [d for d in yaml.safe_load_all(RBAC_PATH.read_text()) if d]
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "RoleBinding":
            subject = doc["subjects"][0]
            doc["subjects"] = [
                {**subject, "namespace": ns} for ns in dict.fromkeys((namespace, identity))
            ]
        out.append(doc)
    return out


def manifests(item: NamespacePlan, cmap: ClusterMap, usecase: UseCase) -> list[dict]:
    """Everything setup creates for one namespace, in creation order."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": item.namespace,
            "labels": {"app.kubernetes.io/part-of": "hmk8s", CREATED_BY: SETUP},
        },
    }
    docs = [namespace, *rbac_manifests(item.namespace, item.identity)]
    for p in item.proxies:
        docs += objects.proxy_objects(cmap, usecase, p, item.namespace)
    return docs


def describe(doc: dict) -> str:
    ns = doc["metadata"].get("namespace")
    return f"{doc['kind']} {ns + '/' if ns else ''}{doc['metadata']['name']}"


@dataclass(frozen=True)
class _Verbs:
    api: str
    create: str
    patch: str
    delete: str


_VERBS = {
    "Namespace": _Verbs("core", "create_namespace", "patch_namespace", "delete_namespace"),
    "ServiceAccount": _Verbs(
        "core",
        "create_namespaced_service_account",
        "patch_namespaced_service_account",
        "delete_namespaced_service_account",
    ),
    "Role": _Verbs(
        "rbac", "create_namespaced_role", "patch_namespaced_role", "delete_namespaced_role"
    ),
    "RoleBinding": _Verbs(
        "rbac",
        "create_namespaced_role_binding",
        "patch_namespaced_role_binding",
        "delete_namespaced_role_binding",
    ),
    "Deployment": _Verbs(
        "apps",
        "create_namespaced_deployment",
        "patch_namespaced_deployment",
        "delete_namespaced_deployment",
    ),
    "Service": _Verbs(
        "core",
        "create_namespaced_service",
        "patch_namespaced_service",
        "delete_namespaced_service",
    ),
    "ConfigMap": _Verbs(
        "core",
        "create_namespaced_config_map",
        "patch_namespaced_config_map",
        "delete_namespaced_config_map",
    ),
    "Secret": _Verbs(
        "core",
        "create_namespaced_secret",
        "patch_namespaced_secret",
        "delete_namespaced_secret",
    ),
}


class Admin:
    """Admin access to the clusters of a plan: one API client per context."""

    def __init__(self, kubeconfig: Path, contexts: Callable[[str], str]) -> None:
        self.kubeconfig = kubeconfig
        self.admin_context = contexts
        self._clients: dict[str, Any] = {}

    def apis(self, context: str) -> dict[str, Any]:
        from kubernetes import client

        name = self.admin_context(context)
        if name not in self._clients:
            self._clients[name] = new_api_client(self.kubeconfig, name)
        api_client = self._clients[name]
        return {
            "core": client.CoreV1Api(api_client),
            "rbac": client.RbacAuthorizationV1Api(api_client),
            "apps": client.AppsV1Api(api_client),
        }

    def close(self) -> None:
        for api_client in self._clients.values():
            api_client.close()


def _args(doc: dict) -> list[str]:
    ns = doc["metadata"].get("namespace")
    return [ns] if ns else []


def apply(admin: Admin, context: str, doc: dict) -> str:
    """Create `doc`, or patch it where it exists (a namespace found is left as it is)."""
    from kubernetes.client.exceptions import ApiException

    verbs, apis = _VERBS[doc["kind"]], admin.apis(context)
    api = apis[verbs.api]
    try:
        discard(getattr(api, verbs.create)(*_args(doc), doc, _preload_content=False))
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise
    if doc["kind"] == "Namespace":
        return "exists"
    name = doc["metadata"]["name"]
    discard(getattr(api, verbs.patch)(name, *_args(doc), doc, _preload_content=False))
    return "patched"


def delete(admin: Admin, context: str, doc: dict) -> str:
    from kubernetes.client.exceptions import ApiException

    verbs = _VERBS[doc["kind"]]
    api = admin.apis(context)[verbs.api]
    name = doc["metadata"]["name"]
    if doc["kind"] == "Namespace":
        try:
            found = api.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return "absent"
            raise
        if (found.metadata.labels or {}).get(CREATED_BY) != SETUP:
            return "kept (not created by setup)"
    try:
        discard(getattr(api, verbs.delete)(name, *_args(doc), _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return "absent"
        raise
    return "deleted"


def setup(admin: Admin, the_plan: Plan) -> list[str]:
    """Create or patch every object of the plan; one line per object."""
    lines = []
    for item in the_plan.namespaces:
        for doc in manifests(item, the_plan.cmap, the_plan.usecase):
            lines.append(f"{apply(admin, item.context, doc):8s} {describe(doc)}")
    return lines


def teardown(admin: Admin, the_plan: Plan) -> list[str]:
    """Delete what `setup` made, in reverse order; one line per object."""
    lines = []
    for item in reversed(the_plan.namespaces):
        for doc in reversed(manifests(item, the_plan.cmap, the_plan.usecase)):
            lines.append(f"{delete(admin, item.context, doc):8s} {describe(doc)}")
    return lines


def mint_token(admin: Admin, context: str, namespace: str, seconds: int) -> str:
    """A token of the namespace's ServiceAccount (TokenRequest API)."""
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    )
    name = rbac_manifests(namespace, namespace)[0]["metadata"]["name"]
    answer = admin.apis(context)["core"].create_namespaced_service_account_token(
        name, namespace, request
    )
    return answer.status.token


def kubeconfig(admin: Admin, the_plan: Plan, seconds: int) -> dict:
    """A kubeconfig whose contexts (named as in the map) act as the plan's ServiceAccounts."""
    source = yaml.safe_load(admin.kubeconfig.read_text())
    clusters, users, contexts = {}, [], []
    for context, identity in the_plan.identities().items():
        admin_ctx = next(c for c in source["contexts"] if c["name"] == admin.admin_context(context))
        cluster_name = admin_ctx["context"]["cluster"]
        clusters[cluster_name] = next(c for c in source["clusters"] if c["name"] == cluster_name)
        user = f"hmk8s-{context}"
        token = mint_token(admin, context, identity, seconds)
        users.append({"name": user, "user": {"token": token}})
        contexts.append(
            {
                "name": context,
                "context": {"cluster": cluster_name, "user": user, "namespace": identity},
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": list(clusters.values()),
        "users": users,
        "contexts": contexts,
        "current-context": contexts[0]["name"],
    }


def env_lines(the_plan: Plan) -> list[str]:
    """Which context and namespace each env's cluster k uses."""
    return [
        f"env {i}: " + ", ".join(f"cluster {k} = {ctx}/{ns}" for k, (ctx, ns) in enumerate(env))
        for i, env in enumerate(the_plan.envs)
    ]
