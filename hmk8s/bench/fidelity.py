"""Sim fidelity: the simulator's prediction beside what a real node measured, step by step.

`measure_on_node` deploys a use case's default placement (`start=minimal`) on the local node
through the Kubernetes backend, replays an episode of the use case's request rates (scaled by
`load_scale`) through the proxies with the load generator, and records per step what the node
reported (CPU utilisation from the kubelet's PodMetrics, the load generator's request latency
through proxy -> functions, the requests sent and answered) and how long the pods took to start.
`predict` plays the same placement and rates in the simulator (its own dynamics,
`hmk8s.sim.dynamics.measure`, without measurement or rate noise: the prediction is the mean).
`fidelity` compares the two; `calibrate` fits the simulator's service rates, network delay,
start-up delays and noise to a recording and returns the calibrated use case.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from hmk8s.k8s import objects
from hmk8s.k8s.emulated.apiserver import REPO
from hmk8s.sim.dynamics import measure
from hmk8s.sim.load_trace import rate_trace, trace_csv
from hmk8s.sim.params import params_from_usecase
from hmk8s.sim.state import EnvState
from hmk8s.usecases import CONFIG_NAMES, UseCase

LOADGEN = REPO / "deploy" / "images" / "loadgen.py"
#: CPU cores the busiest step of the replayed load may take (the rest of a 2-core machine runs
#: the control plane, the kubelet and the load generator)
CPU_BUDGET = 1.2
#: utilisation of the default placement's slowest hop at the busiest step of the replayed load
PEAK_UTILISATION = 0.7
#: measured CPU per request outside the model (HTTP in the proxy and each hop, Python), in
#: core-seconds per request through a two-hop chain (docs/sim-to-real.md, "Scale")
OVERHEAD_CPU_S = 0.004


@dataclass
class Recording:
    """One episode on the node: inputs (placement, rates) and per-step readings."""

    usecase: str
    step_seconds: float
    load_scale: float
    rates: np.ndarray  # [T, P] requests/s the load generator was asked for
    placement: dict[str, Any]  # ready, routes of the mirror after reset (lists)
    node_util: np.ndarray  # [T, K, F, C] CPU usage / request of each instance
    node_latency_s: np.ndarray  # [T, P] mean request latency through each proxy
    sent: np.ndarray  # [T, P]
    ok: np.ndarray  # [T, P]
    start_delays_s: dict[str, list[float]]  # config -> pod creation to Ready, seconds

    def to_json(self) -> dict:
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> Recording:
        arrays = {"rates", "node_util", "node_latency_s", "sent", "ok"}
        return cls(**{k: np.asarray(v) if k in arrays else v for k, v in data.items()})


def default_load_scale(usecase: UseCase, rates: np.ndarray, cpu_scale: float) -> float:
    """The factor that keeps the busiest step of the default placement (`start=minimal`: one
    medium pod per function) unsaturated (utilisation `PEAK_UTILISATION` at its slowest hop)
    and within `CPU_BUDGET` cores: modelled CPU per request (each hop's cpu_limit * cpu_scale /
    mu) plus the measured overhead, times the step's total rate."""
    medium = CONFIG_NAMES.index("medium")
    hops = [usecase.functions.ordered()[f].configs()[medium] for f in usecase.chain_indices]
    per_request = OVERHEAD_CPU_S + sum(h.cpu_limit * cpu_scale / h.mu for h in hops)
    peak = float(rates.sum(axis=1).max())
    return min(
        1.0, CPU_BUDGET / (peak * per_request), PEAK_UTILISATION * min(h.mu for h in hops) / peak
    )


def quiet(usecase: UseCase, rates: np.ndarray, step_seconds: float) -> UseCase:
    """The use case replaying exactly `rates` at `step_seconds`, without rate or measurement
    noise: the simulator's mean prediction for the recorded inputs."""
    proxies = [p.model_copy(update={"noise": 0.0}) for p in usecase.proxies]
    return usecase.model_copy(
        update={
            "trace": tuple(tuple(float(r) for r in row) for row in rates),
            "proxies": tuple(proxies),
            "measurement_noise": 0.0,
            "step_seconds": step_seconds,
        }
    )


def predict(usecase: UseCase, rec: Recording) -> dict[str, np.ndarray]:
    """The simulator on the recorded placement and rates: utilisation and latency per step."""
    params = params_from_usecase(quiet(usecase, rec.rates, rec.step_seconds))
    ready = jnp.asarray(rec.placement["ready"], jnp.int32)
    k, f, c = ready.shape
    state = EnvState(
        ready=ready,
        pending=jnp.zeros((k, f, c, params.pending_depth), jnp.int32),
        routes=jnp.asarray(rec.placement["routes"], jnp.int32),
        backlog=jnp.zeros((k, f, c), jnp.float32),
        burst_left=jnp.zeros(rec.rates.shape[1], jnp.int32),
        burst_level=jnp.ones(rec.rates.shape[1], jnp.float32),
        trace_offset=jnp.zeros((), jnp.int32),
        time=jnp.zeros((), jnp.int32),
        measurement=None,
    )
    utils, latencies = [], []
    for t in range(rec.rates.shape[0]):
        m, backlog, _, _ = measure(jax.random.PRNGKey(t), state, params)
        state = state.replace(backlog=backlog, time=state.time + 1)
        utils.append(np.asarray(m.instance_util))
        latencies.append(np.asarray(m.latency_s))
    return {"util": np.stack(utils), "latency_s": np.stack(latencies)}


def sla_violated(latency_s: np.ndarray, weights: np.ndarray, sla_s: float) -> np.ndarray:
    """Per step: the request-weighted latency over the SLA exceeds one (the reward's test)."""
    total = np.maximum(weights.sum(axis=1), 1e-9)
    return (latency_s * weights).sum(axis=1) / total / sla_s > 1.0


def fidelity(usecase: UseCase, rec: Recording) -> dict[str, Any]:
    """How far the simulator's prediction is from the node, on one recording."""
    sim = predict(usecase, rec)
    placed = np.asarray(rec.placement["ready"]) > 0
    node_util, sim_util = rec.node_util[:, placed], sim["util"][:, placed]
    served = rec.sent > 0
    node_lat, sim_lat = rec.node_latency_s[served], sim["latency_s"][served]
    sla_s = usecase.sla_ms / 1000
    modelled = {
        name: usecase.functions.ordered()[usecase.chain_indices[0]].configs()[i].startup_s
        for i, name in enumerate(CONFIG_NAMES)
    }
    return {
        "cpu_util_mae": float(np.abs(node_util - sim_util).mean()),
        "cpu_util_node_mean": float(node_util.mean()),
        "cpu_util_sim_mean": float(sim_util.mean()),
        "latency_ks": float(stats.ks_2samp(node_lat, sim_lat).statistic),
        "latency_ms_node_p50": float(np.median(node_lat) * 1000),
        "latency_ms_sim_p50": float(np.median(sim_lat) * 1000),
        "sla_violation_node": float(sla_violated(rec.node_latency_s, rec.sent, sla_s).mean()),
        "sla_violation_sim": float(sla_violated(sim["latency_s"], rec.rates, sla_s).mean()),
        "answered": float(rec.ok.sum() / max(rec.sent.sum(), 1)),
        "start_delay_s_node": {c: float(np.median(v)) for c, v in rec.start_delays_s.items() if v},
        "start_delay_s_sim": {c: modelled[c] for c, v in rec.start_delays_s.items() if v},
    }


def calibrate(usecase: UseCase, rec: Recording) -> tuple[UseCase, dict[str, Any]]:
    """Fit the simulator to a recording; the calibrated use case and what was fitted.

    - service rate: a pod that spends more CPU per request than modelled serves fewer; each
      function's mu is divided by the least-squares factor between node and predicted
      utilisation of its placed instances;
    - network delay: the median latency the calibrated hops still miss, spread over the
      chain's network legs (one node: every pair of clusters alike);
    - start-up: each config's median measured pod start;
    - noise: the spread of log(node / predicted) utilisation.
    """
    sim = predict(usecase, rec)
    placed = np.asarray(rec.placement["ready"]) > 0
    functions = usecase.functions.model_dump()
    fitted: dict[str, Any] = {"mu_factor": {}}
    for f_index in usecase.chain_indices:
        name = list(functions)[f_index]
        mask = placed.copy()
        mask[:, [i for i in range(mask.shape[1]) if i != f_index], :] = False
        node, model = rec.node_util[:, mask].ravel(), sim["util"][:, mask].ravel()
        if not model.any():
            continue
        factor = float((node * model).sum() / (model * model).sum())
        fitted["mu_factor"][name] = factor
        for config in functions[name].values():
            config["mu"] = config["mu"] / factor
    for config, delays in rec.start_delays_s.items():
        if delays:
            for name in functions:
                functions[name][config]["startup_s"] = max(1.0, float(np.median(delays)))
    step_one = usecase.model_copy(
        update={"functions": type(usecase.functions).model_validate(functions)}
    )
    served = rec.sent > 0
    gap = np.median(rec.node_latency_s[served] - predict(step_one, rec)["latency_s"][served])
    legs = len(usecase.chain) + 1
    delay_ms = max(0.0, float(gap) * 1000 / legs)
    count = usecase.clusters.count
    clusters = usecase.clusters.model_copy(
        update={
            "network_delay_ms": tuple(tuple(delay_ms for _ in range(count)) for _ in range(count))
        }
    )
    calibrated_util = predict(step_one, rec)["util"][:, placed]
    node_util = rec.node_util[:, placed]
    keep = (calibrated_util > 0.05) & (node_util > 0)
    noise = float(np.std(np.log(node_util[keep] / calibrated_util[keep]))) if keep.any() else 0.0
    fitted.update(network_delay_ms=delay_ms, measurement_noise=min(noise, 0.5))
    fitted["startup_s"] = {c: float(np.median(v)) for c, v in rec.start_delays_s.items() if v}
    calibrated = step_one.model_copy(
        update={"clusters": clusters, "measurement_noise": min(noise, 0.5)}
    )
    return UseCase.model_validate(calibrated.model_dump()), fitted


def usecase_yaml(usecase: UseCase) -> dict:
    """A use case as the YAML `load_usecase` reads (no trace)."""
    data = usecase.model_dump(mode="json")
    data.pop("trace", None)
    return data


def pod_start_delays(api: Any, namespaces: list[str], run_id: str) -> dict[str, list[float]]:
    """Per config: seconds from each function pod's creation to its Ready condition."""
    delays: dict[str, list[float]] = {c: [] for c in CONFIG_NAMES}
    for ns in namespaces:
        pods = api.list_namespaced_pod(ns, label_selector=objects.run_selector(run_id)).items
        for pod in pods:
            ready = next(
                (
                    c
                    for c in pod.status.conditions or []
                    if c.type == "Ready" and c.status == "True"
                ),
                None,
            )
            config = (pod.metadata.labels or {}).get(objects.CONFIG)
            if ready is not None and config in delays:
                delays[config].append(
                    (ready.last_transition_time - pod.metadata.creation_timestamp).total_seconds()
                )
    return delays


def proxy_urls(api: Any, env: Any) -> list[str]:
    """Each proxy's Service address (ClusterIP), in proxy order."""
    urls = []
    for p, home in enumerate(env.homes):
        ns = env.cmap.clusters[home].namespace
        svc = api.read_namespaced_service(objects.proxy_name(env.cmap, p), ns)
        urls.append(f"http://{svc.spec.cluster_ip}:{env.cmap.proxy_port}/records")
    return urls


def wait_proxies_ready(apps: Any, env: Any, timeout_s: float = 60.0) -> None:
    """Until every proxy serves its chain (the kubelet refreshes a chain volume within its sync
    period), so the first replayed step is not lost to a proxy without a chain."""
    deadline = time.monotonic() + timeout_s
    for p, home in enumerate(env.homes):
        ns = env.cmap.clusters[home].namespace
        name = objects.proxy_name(env.cmap, p)
        while (apps.read_namespaced_deployment(name, ns).status.ready_replicas or 0) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"proxy {name} not ready within {timeout_s:.0f} s")
            time.sleep(0.5)


def measure_on_node(
    backend: dict[str, Any],
    usecase: UseCase,
    admin_kubeconfig: Path,
    *,
    steps: int,
    step_seconds: float,
    seed: int,
    load_scale: float | None = None,
) -> Recording:
    """One episode of the use case's load on the node's default placement (see module doc)."""
    from kubernetes import client

    from hmk8s.k8s.client import new_api_client
    from hmk8s.k8s.env import KubernetesClusterEnv

    backend = {**backend, "step_seconds": step_seconds}
    rates = rate_trace(usecase, steps, seed)
    scale = load_scale or default_load_scale(usecase, rates, backend.get("cpu_scale", 1.0))
    rates = rates * scale
    env = KubernetesClusterEnv(
        usecase, backend_cfg=backend, start="minimal", episode_steps=steps + 1
    )
    admin = new_api_client(admin_kubeconfig, "admin")
    core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
    try:
        env.reset(seed=seed)
        wait_proxies_ready(apps, env)
        namespaces = [c.namespace for c in env.cmap.clusters]
        mirror = env.mirror
        placement = {
            "ready": np.asarray(mirror.ready).tolist(),
            "routes": np.asarray(mirror.routes).tolist(),
        }
        with tempfile.TemporaryDirectory(prefix="hmk8s-fidelity-") as tmp:
            trace = Path(tmp) / "rates.csv"
            trace.write_text(trace_csv(usecase, rates))
            cmd = [
                sys.executable,
                str(LOADGEN),
                "--rates",
                str(trace),
                "--step-seconds",
                str(step_seconds),
                "--steps",
                str(steps),
                "--seed",
                str(seed),
                "--timeout",
                str(usecase.timeout_ms / 1000),
            ]
            for url in proxy_urls(core, env):
                cmd += ["--target", url]
            loadgen = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            utils = []
            for _ in range(steps):
                env.step(env.params.layout.noop_index)
                utils.append(np.asarray(env.mirror.measurement.instance_util))
            out, err = loadgen.communicate(timeout=60)
        if loadgen.returncode != 0:
            raise RuntimeError(f"load generator failed: {err.strip()[-300:]}")
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        num_proxies = rates.shape[1]
        latency, sent, ok = (np.zeros((steps, num_proxies)) for _ in range(3))
        targets = proxy_targets(cmd)
        for line in lines:
            t, p = line["step"], targets.index(line["target"])
            sent[t, p], ok[t, p] = line["sent"], line["ok"]
            answered = line["ok"] + line["refused"]
            mean_s = ((line.get("latency_ms") or {}).get("mean") or 0.0) / 1000
            # a request without an answer counts as the timeout, as the simulator counts it
            timeout_s = usecase.timeout_ms / 1000
            total = mean_s * answered + timeout_s * line["failed"]
            latency[t, p] = total / line["sent"] if line["sent"] else math.nan
        delays = pod_start_delays(core, namespaces, env.run_id)
    finally:
        env.close()
        admin.close()
    return Recording(
        usecase=usecase.name,
        step_seconds=step_seconds,
        load_scale=scale,
        rates=rates,
        placement=placement,
        node_util=np.stack(utils),
        node_latency_s=latency,
        sent=sent,
        ok=ok,
        start_delays_s=delays,
    )


def proxy_targets(cmd: list[str]) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--target"]
