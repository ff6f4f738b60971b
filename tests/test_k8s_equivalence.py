"""`sim` and `k8s` (over the emulator and over a real API server, the twin playing the
clusters) share the domain: same seed and actions, same observations and rewards, also when the
emulated API throws 500, 429, 409 and timeouts at 10 % of the requests."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from served import played

from hmk8s.domain.usecases import CONFIG_DIR
from hmk8s.envs.gym_env import SimClusterEnv
from hmk8s.k8s import objects
from hmk8s.k8s.client import ClusterClient, new_api_client
from hmk8s.k8s.emulated.harness import emulation
from hmk8s.k8s.retry import ApiCallError

pytestmark = pytest.mark.usefixtures("fast_compile")

FIELDS = (
    "cpu_util",
    "pods",
    "replicas",
    "ready",
    "instance_util",
    "routes",
    "latency_ratio",
    "rates",
    "action_mask",
)


def ml(**changes) -> dict:
    data = yaml.safe_load((CONFIG_DIR / "ml.yaml").read_text())
    data.update(changes)
    return data


def run_both(emu, sim_env, steps: int, seed: int, action_seed: int, fields=FIELDS):
    """Step both backends with the same actions; return the env, the k8s infos of reset and
    every step, and the faults the emulator injected between the env's pre-flight checks and
    its cleanup."""
    env = emu.make_env()
    preflight = injected(emu)
    rng = np.random.default_rng(action_seed)
    with env:
        obs_k, info_k = env.reset(seed=seed)
        obs_s, info_s = sim_env.reset(seed=seed)
        infos = [info_k]
        compare(env, sim_env, obs_k, obs_s, fields)
        for _ in range(steps):
            allowed = np.flatnonzero(info_s["action_mask"])
            action = (
                int(rng.choice(allowed))
                if rng.random() < 0.8
                else int(rng.integers(env.action_space.n))
            )
            obs_k, r_k, term_k, trunc_k, info_k = env.step(action)
            obs_s, r_s, term_s, trunc_s, info_s = sim_env.step(action)
            compare(env, sim_env, obs_k, obs_s, fields)
            assert r_k == pytest.approx(r_s, abs=1e-5)
            assert (term_k, trunc_k, info_k["invalid"]) == (term_s, trunc_s, info_s["invalid"])
            assert info_k["pods"] == info_s["pods"]
            assert info_k["latency_ratio"] == pytest.approx(info_s["latency_ratio"], rel=1e-5)
            infos.append(info_k)
        faults = {k: v - preflight.get(k, 0) for k, v in injected(emu).items()}
    return env, infos, faults


def injected(emu) -> dict[str, int]:
    """Faults the emulator injected so far (a real server injects none)."""
    emulator = getattr(emu.clusters, "emulator", None)
    return dict(emulator.faults) if emulator is not None else {}


def compare(k8s_env, sim_env, obs_k, obs_s, fields) -> None:
    a, b = k8s_env.structured_observation, sim_env.structured_observation
    for name in fields:
        np.testing.assert_allclose(
            np.asarray(getattr(a, name), np.float64),
            np.asarray(getattr(b, name), np.float64),
            rtol=1e-5,
            atol=1e-6,
            err_msg=name,
        )
    if "cpu_util" in fields:
        # the default (continuous) encoding of equal states, each env compiling its own
        # encoder: equal up to float32 rounding
        np.testing.assert_allclose(obs_k, obs_s, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("kind", "steps"), [("emulator", 40), ("apiserver", 12)])
def test_same_seed_and_actions_give_the_same_trajectory(request, kind, steps):
    """A real server costs ~50 requests a step (the twin's writes included): fewer steps."""
    data = ml(measurement_noise=0.0)
    env_cfg = {"start": "random", "episode_steps": steps}
    with played(request, kind, data, env_cfg) as emu:
        sim_env = SimClusterEnv(data, **env_cfg)
        _, infos, _ = run_both(emu, sim_env, steps=steps, seed=7, action_seed=1)
    assert all(i["api_errors"] == [] for i in infos)


def test_under_measurement_noise_cluster_cpu_is_the_pods_aggregate():
    """With noise on, the simulator draws cluster CPU apart from the instances' CPU; a cluster
    can only report the sum over its pods. Everything else matches exactly."""
    data = ml()
    env_cfg = {"start": "random", "episode_steps": 15}
    fields = tuple(f for f in FIELDS if f != "cpu_util")
    with emulation(data, env_cfg) as emu:
        sim_env = SimClusterEnv(data, **env_cfg)
        env = emu.make_env()
        rng = np.random.default_rng(3)
        with env:
            env.reset(seed=11)
            _, info_s = sim_env.reset(seed=11)
            for _ in range(15):
                action = int(rng.choice(np.flatnonzero(info_s["action_mask"])))
                env.step(action)
                _, _, _, _, info_s = sim_env.step(action)
                compare(env, sim_env, None, None, fields)
                used = np.zeros(3)
                asked = np.zeros(3)
                for k, ns in enumerate(emu.clusters.namespaces):
                    for pm in emu.clusters.objects("metrics.k8s.io/v1beta1/pods", ns):
                        labels = pm["metadata"]["labels"]
                        f = ["encrypt", "decrypt", "firewall"].index(labels[objects.FUNCTION])
                        c = ["small", "medium", "large"].index(labels[objects.CONFIG])
                        used[k] += int(pm["containers"][0]["usage"]["cpu"][:-1]) * 1e-9
                        asked[k] += float(env.params.cpu_request[f, c])
                expected = np.divide(used, asked, out=np.zeros(3), where=asked > 0)
                np.testing.assert_allclose(
                    env.structured_observation.cpu_util, expected, rtol=1e-5, atol=1e-6
                )


def test_faults_at_ten_percent_lose_no_step_and_leak_nothing():
    data = ml(measurement_noise=0.0)
    env_cfg = {"start": "minimal", "episode_steps": 100}
    api = {"timeout_s": 0.25, "backoff_base_s": 0.005, "backoff_max_s": 0.05, "max_attempts": 8}
    with emulation(
        data,
        env_cfg,
        backend={"api": api},
        fault_rate=0.1,
        retry_after="0.1",
        timeout_hold_s=0.35,
        seed=5,
    ) as emu:
        sim_env = SimClusterEnv(data, **env_cfg)
        env, infos, faults = run_both(emu, sim_env, steps=100, seed=3, action_seed=2)
        assert env.close() is None  # closed by run_both already; closing again is a no-op
        leftovers = [
            o
            for kind in ("apps/v1/deployments", "v1/services", "v1/configmaps")
            for o in emu.clusters.objects(kind, selector=objects.run_selector(None))
        ]
    assert leftovers == []
    assert len(infos) == 101 and all(i["api_errors"] == [] for i in infos)
    assert set(faults) == {"500", "429", "409", "timeout"} and min(faults.values()) >= 3
    # each 500, 429 and timeout cost exactly one retry, each 409 one re-read and re-apply
    # (a request slowed past the timeout by a busy machine adds a retry of its own)
    assert (
        sum(i["api"]["retries"] for i in infos) >= faults["500"] + faults["429"] + faults["timeout"]
    )
    assert sum(i["api"]["conflicts"] for i in infos) == faults["409"]
    # and every 429 was waited out for at least its Retry-After of 0.1 s
    assert sum(i["api"]["waited_s"] for i in infos) >= 0.1 * faults["429"] - 1e-6


def test_retry_after_over_http_is_honoured():
    with emulation("ml", fault_rate=1.0, fault_kinds=("429",), retry_after="1") as emu:
        cmap = emu.cmap.model_copy(
            update={
                "api": emu.cmap.api.model_copy(update={"max_attempts": 2, "backoff_base_s": 0.0})
            }
        )
        ref = cmap.clusters[0]
        client = ClusterClient(new_api_client(emu.kubeconfig, ref.context), ref, cmap)
        start = time.monotonic()
        with pytest.raises(ApiCallError, match="HTTP 429"):
            client.list("Deployment", "")
        assert time.monotonic() - start >= 1.0
        assert client.retrier.stats.by_status == {"429": 2}


@pytest.mark.parametrize("source", ["probe", "prometheus-url"])
def test_latency_sources_read_what_the_proxies_measure(source):
    data = ml(measurement_noise=0.0)
    data["proxies"] = [{**p, "base_rate": 5.0} for p in data["proxies"]]  # latency well under SLA
    env_cfg = {"start": "minimal", "episode_steps": 5}
    with emulation(data, env_cfg) as emu:
        if source == "probe":
            latency = {"source": "probe", "probe_requests": 1}
        else:
            service = "api/v1/namespaces/monitoring/services/prometheus-k8s:9090/proxy"
            url = f"{emu.clusters.url}/{service}"
            latency = {"source": "prometheus", "prometheus_url": url}
        env = emu.make_env(latency=emu.cmap.latency.model_copy(update=latency))
        sim_env = SimClusterEnv(data, **env_cfg)
        with env:
            env.reset(seed=0)
            sim_env.reset(seed=0)
            for _ in range(3):
                env.step(env.params.layout.noop_index)
                sim_env.step(env.params.layout.noop_index)
                ours = np.asarray(env.structured_observation.latency_ratio)
                theirs = np.asarray(sim_env.structured_observation.latency_ratio)
                np.testing.assert_allclose(
                    env.structured_observation.rates,
                    sim_env.structured_observation.rates,
                    rtol=1e-6,
                )
                if source == "probe":  # wall time of the probe: the held latency plus overhead
                    sla = float(env.params.sla_s)
                    timeout_ratio = float(env.params.timeout_s) / sla
                    assert np.all(theirs < timeout_ratio)  # probes were held, none timed out
                    assert np.all(ours >= np.minimum(theirs, timeout_ratio) - 1e-6)
                    assert np.all(ours <= np.minimum(theirs + 0.25 / sla, timeout_ratio) + 1e-6)
                else:
                    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
