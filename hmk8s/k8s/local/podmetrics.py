"""Real pod CPU readings served as `metrics.k8s.io/v1beta1` PodMetrics, the way metrics-server
serves them, so the backend and the real HPA controller read the standard API unchanged.

Every `--interval` seconds it reads the kubelet's `/stats/summary` through the API server's node
proxy and writes, for each running pod, the CPU its containers used between the kubelet's last
two samples (`usageCoreNanoSeconds` over the samples' own times, as metrics-server computes it)
with the pod's labels. PodMetrics of pods that are gone are deleted. Nothing here is modelled.

A container the writer sees for the first time is read from its start: the counter starts at
zero with the container, so its first sample over the time since `startTime` is a real mean.
metrics-server waits for a second sample instead; reading from the start gives a new pod its
PodMetrics one kubelet sample earlier, which is what a controller stepping every few seconds
needs after a scale-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hmk8s.k8s.client import METRICS_GROUP, METRICS_VERSION, new_api_client

log = logging.getLogger(__name__)
PodKey = tuple[str, str]


@dataclass(frozen=True)
class Sample:
    """One cumulative CPU reading of a container at the kubelet's sample time."""

    at: float
    core_seconds: float


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def container_samples(summary: dict) -> dict[PodKey, dict[str, Sample]]:
    """(namespace, pod) -> container -> its cumulative CPU sample, from a `/stats/summary`."""
    out: dict[PodKey, dict[str, Sample]] = {}
    for pod in summary.get("pods") or []:
        ref = pod.get("podRef") or {}
        per = {}
        for ct in pod.get("containers") or []:
            cpu = ct.get("cpu") or {}
            if "usageCoreNanoSeconds" in cpu and "time" in cpu:
                per[ct["name"]] = Sample(parse_time(cpu["time"]), cpu["usageCoreNanoSeconds"] / 1e9)
        if per:
            out[(ref.get("namespace"), ref.get("name"))] = per
    return out


def container_starts(summary: dict) -> dict[PodKey, dict[str, Sample]]:
    """(namespace, pod) -> container -> a zero reading at its start (the counter's origin)."""
    out: dict[PodKey, dict[str, Sample]] = {}
    for pod in summary.get("pods") or []:
        ref = pod.get("podRef") or {}
        per = {
            ct["name"]: Sample(parse_time(ct["startTime"]), 0.0)
            for ct in pod.get("containers") or []
            if ct.get("startTime")
        }
        if per:
            out[(ref.get("namespace"), ref.get("name"))] = per
    return out


def since_start(
    last: dict[PodKey, dict[str, Sample]], starts: dict[PodKey, dict[str, Sample]]
) -> dict[PodKey, dict[str, Sample]]:
    """The earlier sample of every container: the last one seen, else its start."""
    return {key: {**starts.get(key, {}), **last.get(key, {})} for key in set(last) | set(starts)}


def usage_cores(old: Sample, new: Sample) -> float | None:
    """Mean cores used between two samples; None when they do not span time (same sample) or
    the counter went back (a restarted container)."""
    dt = new.at - old.at
    used = new.core_seconds - old.core_seconds
    if dt <= 0 or used < 0:
        return None
    return used / dt


def pod_metrics(
    key: PodKey, labels: dict[str, str], usage: dict[str, float], at: float, window_s: float
) -> dict:
    namespace, name = key
    return {
        "apiVersion": f"{METRICS_GROUP}/{METRICS_VERSION}",
        "kind": "PodMetrics",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "timestamp": datetime.fromtimestamp(at).astimezone().isoformat(),
        "window": f"{window_s:.3f}s",
        "containers": [
            {"name": c, "usage": {"cpu": f"{round(cores * 1e9)}n", "memory": "0"}}
            for c, cores in sorted(usage.items())
        ],
    }


def kubelet_summary(core: object, node: str) -> dict:
    """The kubelet's `/stats/summary` of `node`, through the API server's node proxy."""
    answer = core.connect_get_node_proxy_with_path(node, "stats/summary", _preload_content=False)
    return json.loads(answer.data)


def window_usage(
    before: dict[PodKey, dict[str, Sample]], after: dict[PodKey, dict[str, Sample]]
) -> dict[PodKey, dict[str, float]]:
    """Each pod's mean cores per container between two summaries' samples; a pod missing from
    either, or with a container whose counter did not move forward in time, is left out."""
    out = {}
    for key, containers in after.items():
        old = before.get(key, {})
        usage = {
            c: u
            for c, s in containers.items()
            if c in old and (u := usage_cores(old[c], s)) is not None
        }
        if usage and len(usage) == len(containers):
            out[key] = usage
    return out


class Writer:
    """Turns consecutive summaries into PodMetrics objects on the API server."""

    def __init__(self, kubeconfig: Path, node: str) -> None:
        from kubernetes import client

        api_client = new_api_client(kubeconfig, "admin")
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.node = node
        self.last: dict[PodKey, dict[str, Sample]] = {}
        self.written: set[PodKey] = set()

    def once(self) -> int:
        summary = kubelet_summary(self.core, self.node)
        now = container_samples(summary)
        before = since_start(self.last, container_starts(summary))
        pods = {
            (p.metadata.namespace, p.metadata.name): p
            for p in self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node}"
            ).items
        }
        written = set()
        for key, usage in window_usage(before, now).items():
            pod = pods.get(key)
            if pod is None:
                continue
            at = max(s.at for s in now[key].values())
            window = at - max(before[key][c].at for c in usage)
            self.put(pod_metrics(key, dict(pod.metadata.labels or {}), usage, at, window))
            written.add(key)
        for key, containers in now.items():
            # keep the older sample while the kubelet has not sampled again
            prev = self.last.get(key, {})
            self.last[key] = {
                c: s if c not in prev or s.at > prev[c].at else prev[c]
                for c, s in containers.items()
            }
        for key in set(self.last) - set(now):
            del self.last[key]
        for key in self.written - set(pods):
            self.delete(key)
        self.written = (self.written | written) & set(pods)
        return len(written)

    def put(self, body: dict) -> None:
        from kubernetes.client.exceptions import ApiException

        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        args = (METRICS_GROUP, METRICS_VERSION, ns, "pods")
        try:
            current = self.custom.get_namespaced_custom_object(*args, name)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.custom.replace_namespaced_custom_object(*args, name, body)
        except ApiException as err:
            if err.status != 404:
                raise
            self.custom.create_namespaced_custom_object(*args, body)

    def delete(self, key: PodKey) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                METRICS_GROUP, METRICS_VERSION, key[0], "pods", key[1]
            )
        except ApiException as err:
            if err.status != 404:
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    writer = Writer(args.kubeconfig, args.node)
    while True:
        try:
            writer.once()
        except Exception as err:  # the node may be starting or busy: keep going, say why
            log.warning("no PodMetrics this round: %s", err)
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
