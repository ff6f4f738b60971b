"""Episodes on the local node beside the simulator's prediction of them.

`replay` deploys a use case's start placement on the node through the Kubernetes backend,
replays an episode of the use case's request rates (scaled by `load_scale`) through the proxies
with the load generator while a `Player` runs the placement (by default nobody: the no-op), and
records per step what the node reported (CPU utilisation over the whole step from the kubelet's
cumulative counters read at the step's two ends, beside what the agent read from PodMetrics at
the step's end; the load generator's request latency through proxy -> functions, requests sent
and answered, the reward, pods, SLA and replica changes) and how long the pods took to start.
The load generator is paced by the steps: each starts when the backend's step does.
`predict` plays the recorded placement and rates in the simulator (its own dynamics,
`hmk8s.sim.dynamics.measure`, without measurement or rate noise: the prediction is the mean);
`simulate` plays a policy closed-loop in the simulator from the same start on the same rates.
`fidelity` compares node and prediction; `calibrate` fits the simulator's service rates, network
delay, start-up delays and noise to a recording and returns the calibrated use case.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from hmk8s.domain.observation import Measurement
from hmk8s.domain.placement import scale_instances
from hmk8s.domain.settings import params_from_usecase
from hmk8s.domain.state import EnvState
from hmk8s.domain.usecases import CONFIG_NAMES, UseCase
from hmk8s.k8s import objects
from hmk8s.k8s.emulated.apiserver import REPO
from hmk8s.k8s.local.node import NODE_NAME
from hmk8s.k8s.local.podmetrics import (
    PodKey,
    container_samples,
    kubelet_summary,
    pod_metrics,
    window_usage,
)
from hmk8s.k8s.readings import cpu_utilisation, usage_by_instance
from hmk8s.sim.dynamics import measure
from hmk8s.sim.env import ClusterEnv
from hmk8s.sim.load_trace import rate_trace, trace_csv

LOADGEN = REPO / "deploy" / "images" / "loadgen.py"
#: CPU cores the busiest step of the replayed load may take (the rest of a 2-core machine runs
#: the control plane, the kubelet and the load generator)
CPU_BUDGET = 1.2
#: a request's service time as a multiple of 1 / mu, the values `calibrate` tries: a pod's CPU
#: quota can make one request faster than its throughput suggests, never slower
SERVICE_FACTORS = tuple(round(0.05 * i, 2) for i in range(1, 21))
#: the service time's squared coefficient of variation `calibrate` tries (`service_cv2`): from a
#: fixed service (M/D/1) to an exponential one (M/M/1, the model's default)
SERVICE_CV2S = (0.0, 0.25, 0.5, 1.0)
#: utilisation of the default placement's slowest hop at the busiest step of the replayed load
PEAK_UTILISATION = 0.7
#: measured CPU per request outside the model (HTTP in the proxy and each hop, Python), in
#: core-seconds per request through a two-hop chain (docs/sim-to-real.md, "Scale")
OVERHEAD_CPU_S = 0.004


class Player:
    """Who runs the placement during a replayed episode; this one holds it (the no-op)."""

    name = "hold"

    def on_reset(self, env: Any, api_client: Any) -> None:
        """After the start placement is ready, before the first step."""

    def before_step(self, env: Any) -> None:
        """Before each step (e.g. adopt what another controller changed)."""

    def choose(self, env: Any) -> int:
        return env.params.layout.noop_index


def step_utilisation(
    usage: dict[PodKey, dict[str, float]],
    labels: dict[PodKey, dict[str, str]],
    namespaces: list[str],
    ready: np.ndarray,
    cpu_request: np.ndarray,
) -> np.ndarray:
    """Each instance's CPU / request [K, F, C] from pods' mean cores over a window, read the way
    the backend reads PodMetrics (cluster k is `namespaces[k]`)."""
    found: dict = {}
    for k, namespace in enumerate(namespaces):
        metrics = [
            pod_metrics(key, labels.get(key, {}), cores, 0.0, 0.0)
            for key, cores in usage.items()
            if key[0] == namespace
        ]
        found.update(usage_by_instance(k, metrics))
    return cpu_utilisation(ready, found, cpu_request).instance_util


class StepCpu:
    """CPU over whole steps: the kubelet's cumulative counters read when a step starts and when
    it ends (its samples are at most a housekeeping period old), so a step's reading covers the
    step, as the simulator's utilisation does, not the last few seconds the agent sees."""

    def __init__(self, core: Any, namespaces: list[str], cpu_request: np.ndarray) -> None:
        self.core, self.namespaces, self.cpu_request = core, namespaces, cpu_request
        self.last = container_samples(kubelet_summary(core, NODE_NAME))

    def step(self, ready: np.ndarray) -> np.ndarray:
        now = container_samples(kubelet_summary(self.core, NODE_NAME))
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE_NAME}")
        labels = {
            (p.metadata.namespace, p.metadata.name): p.metadata.labels or {} for p in pods.items
        }
        util = step_utilisation(
            window_usage(self.last, now), labels, self.namespaces, ready, self.cpu_request
        )
        self.last = now
        return util


@dataclass
class Recording:
    """One episode on the node: inputs (placement, rates) and per-step readings."""

    usecase: str
    step_seconds: float
    load_scale: float
    rates: np.ndarray  # [T, P] requests/s the load generator was asked for
    placement: dict[str, Any]  # ready, routes of the mirror after reset (lists)
    node_util: np.ndarray  # [T, K, F, C] CPU usage / request of each instance over the step
    node_latency_s: np.ndarray  # [T, P] mean request latency through each proxy
    sent: np.ndarray  # [T, P]
    ok: np.ndarray  # [T, P]
    start_delays_s: dict[str, list[float]]  # config -> pod creation to Ready, seconds
    policy: str = Player.name
    start: str = "minimal"
    rewards: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T] the env's reward
    pods: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T]
    sla_violated: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T]
    changes: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T] replicas +/-
    # [T, K, F, C] what the agent read (PodMetrics at the step's end); empty in recordings made
    # before step-long readings, whose node_util is this reading
    node_util_read: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_json(self) -> dict:
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> Recording:
        arrays = {"rates", "node_util", "node_latency_s", "sent", "ok", "rewards", "pods"}
        arrays |= {"sla_violated", "changes", "node_util_read"}
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


def episodes_load_scale(usecase: UseCase, steps: int, episodes: int) -> float:
    """One scale for episodes of seeds 0..episodes-1: the smallest `default_load_scale` among
    them, so every episode's busiest step fits the machine, and the episodes (and a use case
    calibrated on them) share one load, scaled alike."""
    from hmk8s.k8s.config import shipped_backend

    cpu_scale = shipped_backend("local").get("cpu_scale", 1.0)
    return min(
        default_load_scale(usecase, rate_trace(usecase, steps, seed), cpu_scale)
        for seed in range(episodes)
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
    state = start_state(params, rec)
    utils, latencies = [], []
    for t in range(rec.rates.shape[0]):
        m, backlog, _, _ = _measure(jax.random.PRNGKey(t), state, params)
        state = state.replace(backlog=backlog, time=state.time + 1)
        utils.append(np.asarray(m.instance_util))
        latencies.append(np.asarray(m.latency_s))
    return {"util": np.stack(utils), "latency_s": np.stack(latencies)}


def start_state(params: Any, rec: Recording) -> EnvState:
    """The simulator's state at the recorded start placement (nothing pending or queued), with
    the start measured on the first step's rates, as the simulator's reset and the node's
    first reading both do: a policy's first observation is a reading, not zeros."""
    ready = jnp.asarray(rec.placement["ready"], jnp.int32)
    k, f, c = ready.shape
    num_proxies = rec.rates.shape[1]
    state = EnvState(
        ready=ready,
        pending=jnp.zeros((k, f, c, params.pending_depth), jnp.int32),
        routes=jnp.asarray(rec.placement["routes"], jnp.int32),
        backlog=jnp.zeros((k, f, c), jnp.float32),
        burst_left=jnp.zeros(num_proxies, jnp.int32),
        burst_level=jnp.ones(num_proxies, jnp.float32),
        trace_offset=jnp.zeros((), jnp.int32),
        time=jnp.zeros((), jnp.int32),
        measurement=Measurement(
            rates=jnp.asarray(rec.rates[0], jnp.float32),
            instance_util=jnp.zeros((k, f, c), jnp.float32),
            cluster_cpu=jnp.zeros(k, jnp.float32),
            latency_s=jnp.zeros(num_proxies, jnp.float32),
        ),
    )
    measurement, _, _, _ = _measure(jax.random.PRNGKey(0), state, params)
    return state.replace(measurement=measurement)


def simulate(usecase: UseCase, rec: Recording, policy: Any) -> dict[str, float]:
    """`policy` (a `hmk8s.policies` Policy: `init`, `act`) in charge in the simulator, from
    the recorded start on the recorded rates: the simulator's prediction of the episode."""
    params = params_from_usecase(
        quiet(usecase, rec.rates, rec.step_seconds), {"episode_steps": len(rec.rates) + 1}
    )
    env = ClusterEnv()
    state = start_state(params, rec)
    obs = env.get_obs(state, params)
    pstate = policy.init(params)
    step = jax.jit(env.step_env)
    act = jax.jit(policy.act)
    scale = jax.jit(scale_instances)
    rewards, sla, pods, replicas = [], [], [], []
    for t in range(len(rec.rates)):
        key = jax.random.PRNGKey(t)
        action, pstate = act(key, pstate, obs, params)
        if policy.scales:  # it sets replicas itself (hpa_exact), then acts
            action, target = action
            state = scale(state, target, params)
        obs, state, r, _, _, info = step(key, state, action, params)
        rewards.append(float(r))
        sla.append(bool(info["sla_violated"]))
        pods.append(int(info["pods"]))
        replicas.append(np.asarray(state.replicas))
    initial = np.asarray(rec.placement["ready"])
    return summary(
        np.asarray(rewards),
        np.asarray(sla),
        np.asarray(pods),
        replica_changes(initial, np.stack(replicas)),
    )


def summary(
    rewards: np.ndarray, sla: np.ndarray, pods: np.ndarray, changes: np.ndarray
) -> dict[str, float]:
    return {
        "return": float(rewards.sum()),
        "sla_violation_rate": float(np.mean(sla)),
        "pods_mean": float(np.mean(pods)),
        "changes": float(np.sum(changes)),
    }


def node_summary(rec: Recording) -> dict[str, float]:
    """What the node measured, in `simulate`'s terms."""
    return summary(rec.rewards, rec.sla_violated, rec.pods, rec.changes)


def sla_violated(latency_s: np.ndarray, weights: np.ndarray, sla_s: float) -> np.ndarray:
    """Per step: the request-weighted latency over the SLA exceeds one (the reward's test)."""
    total = np.maximum(weights.sum(axis=1), 1e-9)
    return (latency_s * weights).sum(axis=1) / total / sla_s > 1.0


def fidelity(pairs: list[tuple[UseCase, Recording]]) -> dict[str, Any]:
    """How far the simulator's prediction is from the node, over recordings pooled, each
    predicted with its own use case (one calibrated without it, when cross-validating)."""
    node_util, sim_util, node_lat, sim_lat, node_sla, sim_sla = ([] for _ in range(6))
    delays: dict[str, list[float]] = {}
    for usecase, rec in pairs:
        sim = predict(usecase, rec)
        placed = np.asarray(rec.placement["ready"]) > 0
        node_util.append(rec.node_util[:, placed].ravel())
        sim_util.append(sim["util"][:, placed].ravel())
        served = rec.sent > 0
        node_lat.append(rec.node_latency_s[served])
        sim_lat.append(sim["latency_s"][served])
        sla_s = usecase.sla_ms / 1000
        node_sla.append(sla_violated(rec.node_latency_s, rec.sent, sla_s))
        sim_sla.append(sla_violated(sim["latency_s"], rec.rates, sla_s))
        for config, measured in rec.start_delays_s.items():
            delays.setdefault(config, []).extend(measured)
    node_util, sim_util, node_lat, sim_lat, node_sla, sim_sla = (
        np.concatenate(a) for a in (node_util, sim_util, node_lat, sim_lat, node_sla, sim_sla)
    )
    last = pairs[-1][0]
    modelled = {
        name: last.functions.ordered()[last.chain_indices[0]].configs()[i].startup_s
        for i, name in enumerate(CONFIG_NAMES)
    }
    recs = [rec for _, rec in pairs]
    return {
        "cpu_util_mae": float(np.abs(node_util - sim_util).mean()),
        "cpu_util_node_mean": float(node_util.mean()),
        "cpu_util_sim_mean": float(sim_util.mean()),
        "latency_ks": float(stats.ks_2samp(node_lat, sim_lat).statistic),
        "latency_ms_node_p50": float(np.median(node_lat) * 1000),
        "latency_ms_sim_p50": float(np.median(sim_lat) * 1000),
        "sla_violation_node": float(node_sla.mean()),
        "sla_violation_sim": float(sim_sla.mean()),
        "answered": float(sum(r.ok.sum() for r in recs) / max(sum(r.sent.sum() for r in recs), 1)),
        "start_delay_s_node": {c: float(np.median(v)) for c, v in delays.items() if v},
        "start_delay_s_sim": {c: modelled[c] for c, v in delays.items() if v},
    }


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The c minimising sum(weights * |values - c|): with values = node / model and weights =
    model, the scale of the model's utilisation with the least absolute error."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def rate_factor(node: np.ndarray, model: np.ndarray) -> float:
    """The scale of the model's utilisation with the least absolute error against the node's."""
    return weighted_median(node / np.maximum(model, 1e-9), model)


def holds_out(node: list[np.ndarray], model: list[np.ndarray]) -> bool:
    """Whether a service-rate factor fitted on all episodes but one predicts the one left out
    better than the model unchanged, summed over every episode left out in turn (with one
    episode there is nothing to check, and the fit is taken). Where the node's readings only
    swing around the model, a fitted factor follows the swing of the episodes it saw and makes
    the next one worse: the model's rate is kept."""
    if len(node) < 2:
        return True
    fitted_error = unchanged_error = 0.0
    for i in range(len(node)):
        rest = [j for j in range(len(node)) if j != i]
        factor = rate_factor(
            np.concatenate([node[j] for j in rest]), np.concatenate([model[j] for j in rest])
        )
        fitted_error += float(np.abs(node[i] - factor * model[i]).sum())
        unchanged_error += float(np.abs(node[i] - model[i]).sum())
    return fitted_error < unchanged_error


def calibrate(usecase: UseCase, recs: list[Recording]) -> tuple[UseCase, dict[str, Any]]:
    """Fit the simulator to recordings (their steps pooled); the calibrated use case and what
    was fitted.

    - service rate: a pod that spends more CPU per request than modelled serves fewer; each
      function's mu is divided by the factor between node and predicted utilisation of its
      placed instances that minimises their absolute error (the error the fidelity report
      gives), on the steps the model does not saturate them: one disturbed step (the machine
      busy, the load stopped) moves it no more than any other. A factor that does not predict
      an episode left out better than the model (`holds_out`) is not applied (`mu_kept`);
    - service time: the multiple of 1 / mu (`service_ms`) and the squared coefficient of
      variation (`service_cv2`, the M/G/1 wait) whose predicted latency distribution is closest
      to the node's (KS distance, then mean absolute error): a pod under a CPU quota serves a
      request faster than 1 / mu, and nearly the same work per request waits less than M/M/1
      says;
    - network delay: the use case's clusters share one node, so every pair is alike: the
      median latency the hops still miss on steps where every request was answered, spread
      over the chain's network legs; fitted with the service time, for each candidate;
    - start-up: each config's median measured pod start;
    - noise: the spread of log(node / predicted) utilisation;
    - the node's conditions: its step length and the load scaled as it was replayed, so an
      agent trained on the calibrated use case trains on the load the node will see.
    """
    if not recs or len({(r.step_seconds, r.load_scale) for r in recs}) != 1:
        raise ValueError("calibrate: recordings of one step length and load scale are needed")
    first = recs[0]
    params = params_from_usecase(usecase)
    cap = (np.asarray(params.cpu_limit) / np.asarray(params.cpu_request))[None, None]
    placed = [np.asarray(r.placement["ready"]) > 0 for r in recs]
    functions = usecase.functions.model_dump()
    fitted: dict[str, Any] = {"mu_factor": {}, "mu_kept": [], "episodes": len(recs)}
    predicted = [predict(usecase, r)["util"] for r in recs]
    for f_index in usecase.chain_indices:
        name = list(functions)[f_index]
        node, model = [], []
        for rec, util, where in zip(recs, predicted, placed, strict=True):
            mask = where.copy()
            mask[:, [i for i in range(mask.shape[1]) if i != f_index], :] = False
            # a saturated pod's utilisation says nothing about its rate: fit where the model is not
            unsaturated = (util < 0.95 * cap)[:, mask].ravel()
            node.append(rec.node_util[:, mask].ravel()[unsaturated])
            model.append(util[:, mask].ravel()[unsaturated])
        node_all, model_all = np.concatenate(node), np.concatenate(model)
        if not model_all.any():
            continue
        factor = rate_factor(node_all, model_all)
        if not holds_out(node, model):
            fitted["mu_kept"].append(name)
            continue
        fitted["mu_factor"][name] = factor
        for config in functions[name].values():
            config["mu"] = config["mu"] / factor
    delays = {c: [d for r in recs for d in r.start_delays_s.get(c, [])] for c in CONFIG_NAMES}
    for config, measured in delays.items():
        if measured:
            for name in functions:
                functions[name][config]["startup_s"] = max(1.0, float(np.median(measured)))
    served = [r.sent > 0 for r in recs]

    count = usecase.clusters.count

    def one_node(delay_ms: float) -> Any:
        """Every pair of clusters `delay_ms` apart: the use case's clusters share one node."""
        row = tuple(delay_ms for _ in range(count))
        return usecase.clusters.model_copy(update={"network_delay_ms": (row,) * count})

    def with_service(service: tuple[float, float], delay_ms: float = 0.0) -> UseCase:
        factor, cv2 = service
        for name in functions:
            for config in functions[name].values():
                config["service_ms"] = factor * 1000.0 / config["mu"]
                config["service_cv2"] = cv2
        return usecase.model_copy(
            update={
                "functions": type(usecase.functions).model_validate(functions),
                "clusters": one_node(delay_ms),
            }
        )

    def pooled(candidate: UseCase, key: str, where: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(
            [predict(candidate, r)[key][w] for r, w in zip(recs, where, strict=True)]
        )

    node_latency = np.concatenate([r.node_latency_s[w] for r, w in zip(recs, served, strict=True)])
    # what the hops miss where every request was answered (a timeout is no network delay)
    clean = [w & (r.ok == r.sent) for r, w in zip(recs, served, strict=True)]
    node_clean = np.concatenate([r.node_latency_s[c] for r, c in zip(recs, clean, strict=True)])
    legs = len(usecase.chain) + 1

    def network_delay_ms(service: tuple[float, float]) -> float:
        """The median latency these hops miss on the clean steps, spread over the legs."""
        if not node_clean.size:
            return 0.0
        gap = np.median(node_clean - pooled(with_service(service), "latency_s", clean))
        return max(0.0, float(gap) * 1000 / legs)

    def latency_error(candidate: UseCase) -> tuple[float, float]:
        """The latency distributions' KS distance, then the mean absolute error."""
        model = pooled(candidate, "latency_s", served)
        return (
            float(stats.ks_2samp(node_latency, model).statistic),
            float(np.abs(node_latency - model).mean()),
        )

    # service time, its variation and the network delay together: a fixed cost per leg and a
    # short, load-dependent service can look like one long service time at a single load
    fits = {
        service: network_delay_ms(service)
        for service in itertools.product(SERVICE_FACTORS, SERVICE_CV2S)
    }
    service, delay_ms = min(
        fits.items(), key=lambda fit: latency_error(with_service(fit[0], fit[1]))
    )
    fitted["service_factor"], fitted["service_cv2"] = service
    step_one = with_service(service)
    clusters = one_node(delay_ms)
    every_step = [p[None].repeat(len(r.rates), 0) for r, p in zip(recs, placed, strict=True)]
    calibrated_util = pooled(step_one, "util", every_step)
    node_util = np.concatenate(
        [r.node_util[:, p].ravel() for r, p in zip(recs, placed, strict=True)]
    )
    keep = (calibrated_util > 0.05) & (node_util > 0)
    noise = float(np.std(np.log(node_util[keep] / calibrated_util[keep]))) if keep.any() else 0.0
    fitted.update(network_delay_ms=delay_ms, measurement_noise=min(noise, 0.5))
    fitted["startup_s"] = {c: float(np.median(v)) for c, v in delays.items() if v}
    proxies = tuple(
        p.model_copy(update={"base_rate": p.base_rate * first.load_scale}) for p in usecase.proxies
    )
    calibrated = step_one.model_copy(
        update={
            "clusters": clusters,
            "measurement_noise": min(noise, 0.5),
            "proxies": proxies,
            "step_seconds": first.step_seconds,
        }
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


def function_key(api: Any, namespace: str) -> str:
    """The functions' AES-GCM key (hex), from the Secret their pods mount."""
    import base64

    secret = api.read_namespaced_secret(objects.KEY_SECRET, namespace)
    return base64.b64decode(secret.data["key"]).decode()


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


def replay_episodes(
    node_dir: Path,
    usecase: UseCase,
    *,
    steps: int,
    step_seconds: float,
    episodes: int,
    load_scale: float | None = None,
    player: Player | None = None,
) -> Iterator[Recording]:
    """Episodes of seeds 0..episodes-1 on the node, one after the other as they are asked for,
    all at `load_scale` (default: `episodes_load_scale`)."""
    scale = load_scale or episodes_load_scale(usecase, steps, episodes)
    for seed in range(episodes):
        yield replay(
            node_dir,
            usecase,
            steps=steps,
            step_seconds=step_seconds,
            seed=seed,
            load_scale=scale,
            player=player,
        )


def replay(
    node_dir: Path,
    usecase: UseCase,
    *,
    steps: int,
    step_seconds: float,
    seed: int,
    load_scale: float,
    start: str = "minimal",
    player: Player | None = None,
) -> Recording:
    """One episode of the use case's load times `load_scale` on the node of `node_dir`
    (`scripts/local_cluster.py up`; see the module doc), with `player` in charge of the
    placement (the default holds it: every step the no-op)."""
    from kubernetes import client

    from hmk8s.k8s.client import new_api_client
    from hmk8s.k8s.config import shipped_backend
    from hmk8s.k8s.env import KubernetesClusterEnv

    player = player or Player()
    backend = shipped_backend("local")
    backend.update(kubeconfig=str(node_dir / "run.kubeconfig"), step_seconds=step_seconds)
    rates = rate_trace(usecase, steps, seed) * load_scale
    env = KubernetesClusterEnv(usecase, backend_cfg=backend, start=start, episode_steps=steps + 1)
    admin = new_api_client(node_dir / "kubeconfig", "admin")
    core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
    try:
        env.reset(seed=seed)
        wait_proxies_ready(apps, env)
        player.on_reset(env, admin)
        namespaces = [c.namespace for c in env.cmap.clusters]
        mirror = env.mirror
        placement = {
            "ready": np.asarray(mirror.ready).tolist(),
            "routes": np.asarray(mirror.routes).tolist(),
        }
        with tempfile.TemporaryDirectory(prefix="hmk8s-replay-") as tmp:
            trace = Path(tmp) / "rates.csv"
            trace.write_text(trace_csv(usecase, rates))
            targets = proxy_urls(core, env)
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
                "--paced",
            ]
            for url in targets:
                cmd += ["--target", url]
            if "decrypt" in usecase.chain:  # requests must be ciphertexts the chain can open
                key = Path(tmp) / "key"
                key.write_text(function_key(core, env.cmap.clusters[0].namespace))
                cmd += ["--seal-key", str(key)]
            loadgen = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            if not loadgen.stdout.readline().startswith('{"ready"'):
                raise RuntimeError(f"load generator failed: {loadgen.communicate()[1][-300:]}")
            cpu = StepCpu(core, namespaces, env.observer.cpu_request)
            utils, read, rewards, pods, sla, replicas = [], [], [], [], [], []
            for t in range(steps):
                player.before_step(env)
                loadgen.stdin.write(f"{t}\n")
                loadgen.stdin.flush()
                _, r, _, _, info = env.step(player.choose(env))
                utils.append(cpu.step(np.asarray(env.mirror.ready)))
                read.append(np.asarray(env.mirror.measurement.instance_util))
                rewards.append(r)
                pods.append(info["pods"])
                sla.append(info["sla_violated"])
                replicas.append(np.asarray(env.mirror.replicas))
            out, err = loadgen.communicate(timeout=60)
        if loadgen.returncode != 0:
            raise RuntimeError(f"load generator failed: {err.strip()[-300:]}")
        latency, sent, ok = loadgen_steps(out, targets, steps, usecase.timeout_ms / 1000)
        delays = pod_start_delays(core, namespaces, env.run_id)
    finally:
        env.close()
        admin.close()
    before = np.asarray(placement["ready"])
    return Recording(
        usecase=usecase.name,
        policy=player.name,
        start=start,
        step_seconds=step_seconds,
        load_scale=load_scale,
        rates=rates,
        placement=placement,
        node_util=np.stack(utils),
        node_util_read=np.stack(read),
        node_latency_s=latency,
        sent=sent,
        ok=ok,
        start_delays_s=delays,
        rewards=np.asarray(rewards),
        pods=np.asarray(pods),
        sla_violated=np.asarray(sla),
        changes=replica_changes(before, np.stack(replicas)),
    )


_measure = jax.jit(measure)


def replica_changes(initial: np.ndarray, replicas: np.ndarray) -> np.ndarray:
    """Per step, replicas added or removed over all instances (routing changes not counted)."""
    steps = np.concatenate([initial[None], replicas])
    return np.abs(np.diff(steps, axis=0)).reshape(len(replicas), -1).sum(axis=1)


def loadgen_steps(
    out: str, targets: list[str], steps: int, timeout_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The load generator's per-step report: mean latency (an unanswered request counts as the
    timeout, as the simulator counts it), requests sent and answered 2xx, [steps, proxies]."""
    latency, sent, ok = (np.zeros((steps, len(targets))) for _ in range(3))
    for line in (json.loads(x) for x in out.splitlines() if x.startswith("{")):
        t, p = line["step"], targets.index(line["target"])
        sent[t, p], ok[t, p] = line["sent"], line["ok"]
        answered = line["ok"] + line["refused"]
        mean_s = ((line.get("latency_ms") or {}).get("mean") or 0.0) / 1000
        total = mean_s * answered + timeout_s * line["failed"]
        latency[t, p] = total / line["sent"] if line["sent"] else math.nan
    return latency, sent, ok
