"""Names, labels and manifests of the objects a run creates (pure functions, plain dicts).

Every object carries `app.kubernetes.io/managed-by=hmk8s` and the run id, so one label selector
finds all of a run's objects, and `managed-by` alone finds the leftovers of every run.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass

from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES, UseCase
from hmk8s.k8s.config import ClusterMap

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "hmk8s"
RUN_ID = "hmk8s.io/run-id"
FUNCTION = "hmk8s.io/function"
CONFIG = "hmk8s.io/config"
INSTANCE = "hmk8s.io/instance"
PROXY = "hmk8s.io/proxy"
COMPONENT = "app.kubernetes.io/component"
CHAIN_KEY = "chain.json"
# what a function pod reads: the AES key (encrypt, decrypt) or the firewall's rules, created once
# per namespace outside runs (deploy/functions.yaml), mounted where the nf image looks for them
KEY_SECRET = "hmk8s-nf-key"
RULES_CONFIGMAP = "hmk8s-firewall-rules"
FUNCTION_FILES = "/etc/hmk8s/nf"
# the restricted Pod Security Standard, met by every pod of the data plane
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "runAsGroup": 65534,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
PROBES = {
    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
    "livenessProbe": {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 3,
    },
}


def instance_name(function: int, config: int) -> str:
    """`hmk8s-<function>-<config>`: one instance per (function, config) per cluster namespace."""
    return f"hmk8s-{FUNCTION_NAMES[function]}-{CONFIG_NAMES[config]}"


def proxy_name(cmap: ClusterMap, proxy: int) -> str:
    return cmap.proxy_name.format(p=proxy)


def chain_configmap_name(cmap: ClusterMap, proxy: int) -> str:
    return cmap.chain_configmap.format(p=proxy)


def run_labels(run_id: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, RUN_ID: run_id}


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def run_selector(run_id: str | None) -> str:
    """All objects of one run, or of every run when `run_id` is None."""
    return selector(run_labels(run_id) if run_id is not None else {MANAGED_BY: MANAGER})


def instance_labels(run_id: str, function: int, config: int) -> dict[str, str]:
    return {
        **run_labels(run_id),
        COMPONENT: "function",
        "app.kubernetes.io/name": FUNCTION_NAMES[function],
        FUNCTION: FUNCTION_NAMES[function],
        CONFIG: CONFIG_NAMES[config],
        INSTANCE: instance_name(function, config),
    }


def cpu_quantity(cores: float) -> str:
    """Cores as a millicore quantity, the unit Kubernetes normalises CPU to."""
    return f"{round(cores * 1000)}m"


def deployment(
    cmap: ClusterMap, usecase: UseCase, run_id: str, function: int, config: int, replicas: int
) -> dict:
    """The Deployment of instance (f, c); its pods request the config's CPU (times the map's
    `cpu_scale`), and each request costs cpu_limit / mu core-seconds (HMK8S_CPU_LIMIT over
    HMK8S_SERVICE_RATE), so a pod serves mu requests/s at any scale."""
    name = instance_name(function, config)
    fname, cname = FUNCTION_NAMES[function], CONFIG_NAMES[config]
    profile = usecase.functions.ordered()[function].configs()[config]
    cpu_request, cpu_limit = (
        profile.cpu_request * cmap.cpu_scale,
        profile.cpu_limit * cmap.cpu_scale,
    )
    memory = cmap.memory_of(cname)
    labels = instance_labels(run_id, function, config)
    match = {INSTANCE: name, RUN_ID: run_id}
    files = (
        {"configMap": {"name": RULES_CONFIGMAP}}
        if fname == "firewall"
        else {"secret": {"secretName": KEY_SECRET}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": copy.deepcopy(POD_SECURITY),
                    "containers": [
                        {
                            "name": fname,
                            "image": cmap.images[fname],
                            "ports": [{"name": "http", "containerPort": cmap.port}],
                            "env": [
                                {"name": "HMK8S_FUNCTION", "value": fname},
                                {"name": "HMK8S_CONFIG", "value": cname},
                                {"name": "HMK8S_SERVICE_RATE", "value": str(profile.mu)},
                                {"name": "HMK8S_CPU_LIMIT", "value": str(cpu_limit)},
                            ],
                            "resources": {
                                "requests": {
                                    "cpu": cpu_quantity(cpu_request),
                                    "memory": memory.request,
                                },
                                "limits": {
                                    "cpu": cpu_quantity(cpu_limit),
                                    "memory": memory.limit,
                                },
                            },
                            **copy.deepcopy(PROBES),
                            "securityContext": copy.deepcopy(CONTAINER_SECURITY),
                            "volumeMounts": [
                                {"name": "nf", "mountPath": FUNCTION_FILES, "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [{"name": "nf", **files}],
                },
            },
        },
    }


def autoscaler(
    run_id: str,
    function: int,
    config: int,
    target_utilisation: float,
    max_replicas: int,
    owner_uid: str,
) -> dict:
    """An `autoscaling/v2beta2` HorizontalPodAutoscaler on instance (f, c)'s Deployment, with the
    CPU target of the simulator's `hpa` baseline, owned by the Deployment (garbage-collected
    with it), so the real HPA controller can take the instance over."""
    name = instance_name(function, config)
    return {
        "apiVersion": "autoscaling/v2beta2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "labels": instance_labels(run_id, function, config),
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": owner_uid}
            ],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": round(target_utilisation * 100),
                        },
                    },
                }
            ],
        },
    }


def service(cmap: ClusterMap, run_id: str, function: int, config: int) -> dict:
    """The ClusterIP Service proxies address the instance by."""
    name = instance_name(function, config)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": instance_labels(run_id, function, config)},
        "spec": {
            "selector": {INSTANCE: name, RUN_ID: run_id},
            "ports": [{"name": "http", "port": cmap.port, "targetPort": "http"}],
        },
    }


@dataclass(frozen=True)
class Hop:
    """One hop of a proxy's chain; `cluster` is None when no instance serves the function."""

    function: int
    cluster: int | None
    config: int | None


def endpoint(cmap: ClusterMap, home: int, hop: Hop) -> str | None:
    """The address proxy-home uses for the hop: the local template in its own cluster."""
    if hop.cluster is None or hop.config is None:
        return None
    template = cmap.address.local if hop.cluster == home else cmap.address.remote
    return template.format(
        service=instance_name(hop.function, hop.config),
        namespace=cmap.clusters[hop.cluster].namespace,
        port=cmap.port,
        cluster=cmap.clusters[hop.cluster].context,
    )


def chain_document(cmap: ClusterMap, proxy: int, home: int, hops: Sequence[Hop]) -> str:
    """The proxy's ordered endpoints as JSON; a null endpoint is a broken hop."""
    return json.dumps(
        {
            "proxy": proxy_name(cmap, proxy),
            "hops": [
                {
                    "function": FUNCTION_NAMES[h.function],
                    "cluster": h.cluster,
                    "config": None if h.config is None else CONFIG_NAMES[h.config],
                    "endpoint": endpoint(cmap, home, h),
                }
                for h in hops
            ],
        },
        sort_keys=True,
    )


def chain_configmap(
    cmap: ClusterMap, run_id: str, proxy: int, home: int, hops: Sequence[Hop]
) -> dict:
    """`proxy<p>-chain`, which the proxy Deployment mounts and re-reads."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": chain_configmap_name(cmap, proxy),
            "labels": {**run_labels(run_id), COMPONENT: "chain", PROXY: proxy_name(cmap, proxy)},
        },
        "data": {CHAIN_KEY: chain_document(cmap, proxy, home, hops)},
    }


PROXY_LABELS = {"app.kubernetes.io/name": "hmk8s-proxy", "app.kubernetes.io/part-of": "hmk8s"}


def proxy_objects(cmap: ClusterMap, usecase: UseCase, proxy: int, namespace: str) -> list[dict]:
    """Proxy p's Deployment and Service (`deploy/proxies.yaml` shows ML's). It mounts its chain
    ConfigMap (optional, so it starts before a run writes one); it is not `managed-by=hmk8s`,
    so it outlives runs. Its timeout is the use case's, its measurement window one step."""
    name = proxy_name(cmap, proxy)
    labels = {**PROXY_LABELS, PROXY: name}
    meta = {"name": name, "namespace": namespace, "labels": labels}
    port = cmap.proxy_port
    container = {
        "name": "proxy",
        "image": cmap.proxy_image,
        "args": [
            "--chain",
            f"/etc/hmk8s/{CHAIN_KEY}",
            "--port",
            str(port),
            "--function-port",
            str(cmap.port),
            "--timeout",
            str(usecase.timeout_ms / 1000),
            "--window",
            f"{usecase.step_seconds:g}",
        ],
        "env": [{"name": "HMK8S_PROXY", "value": name}],
        "ports": [{"name": "http", "containerPort": port}],
        **copy.deepcopy(PROBES),
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [{"name": "chain", "mountPath": "/etc/hmk8s", "readOnly": True}],
    }
    deployment_ = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {PROXY: name}},
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": copy.deepcopy(POD_SECURITY),
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "chain",
                            "configMap": {
                                "name": chain_configmap_name(cmap, proxy),
                                "optional": True,
                            },
                        }
                    ],
                },
            },
        },
    }
    service_ = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dict(meta),
        "spec": {
            "selector": {PROXY: name},
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }
    return [deployment_, service_]


def samples(cmap: ClusterMap, usecase: UseCase, run_id: str) -> list[dict]:
    """One object of each kind a run writes, for the pre-flight's dry-run creates."""
    function = FUNCTION_NAMES.index(usecase.chain[0])
    return [
        deployment(cmap, usecase, run_id, function, 0, 1),
        service(cmap, run_id, function, 0),
        chain_configmap(cmap, run_id, 0, usecase.proxies[0].home, ()),
    ]


class ChainFormatError(ValueError):
    """A chain document that is not what `chain_document` writes (edited by hand, truncated)."""


def read_chain(document: object) -> list[tuple[Hop, str | None]]:
    """Inverse of `chain_document`: each hop with the endpoint written for it. Anything else
    (not JSON, missing fields, unknown function or config names) is a `ChainFormatError`."""
    try:
        hops = json.loads(document)["hops"]  # type: ignore[arg-type]
        out = []
        for h in hops:
            config, cluster, endpoint_ = h["config"], h["cluster"], h["endpoint"]
            if (cluster is None) != (config is None) or not (
                cluster is None or (type(cluster) is int and cluster >= 0)
            ):
                raise ValueError(f"hop {h!r}: cluster and config must both be set or null")
            if endpoint_ is not None and not isinstance(endpoint_, str):
                raise ValueError(f"hop {h!r}: endpoint must be a string or null")
            hop = Hop(
                FUNCTION_NAMES.index(h["function"]),
                cluster,
                None if config is None else CONFIG_NAMES.index(config),
            )
            out.append((hop, endpoint_))
        return out
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ChainFormatError(f"malformed {CHAIN_KEY}: {detail}") from None


def parse_chain(document: str) -> list[tuple[int, int | None, int | None]]:
    """(function, cluster, config) per hop of a chain document (`read_chain`)."""
    return [(h.function, h.cluster, h.config) for h, _ in read_chain(document)]
