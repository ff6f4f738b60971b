"""Shared fixtures for the domain and simulator tests.

The factories build use cases from the shipped YAML with explicit changes (so every test states
the numbers it relies on), quiet simulator parameters (no rate noise, no bursts, no measurement
noise), and hand-built simulator states.
"""

from __future__ import annotations

import copy
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import pytest
import yaml
from script_runs import session_cache

from hmk8s.domain import placement
from hmk8s.domain.observation import Measurement
from hmk8s.domain.params import EnvParams
from hmk8s.domain.settings import params_from_usecase
from hmk8s.domain.state import EnvState
from hmk8s.domain.usecases import CONFIG_DIR, load_usecase
from hmk8s.sim import dynamics
from hmk8s.sim.env import ClusterEnv
from hmk8s.train.cache import CACHE_ENV

# what the tests run in this process keeps its compiled programs and scores in the session's
# temporary cache, never in the user's
os.environ[CACHE_ENV] = str(session_cache())

_YAML_CACHE: dict[str, dict[str, Any]] = {}


def _yaml_mapping(name: str) -> dict[str, Any]:
    if name not in _YAML_CACHE:
        _YAML_CACHE[name] = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    return copy.deepcopy(_YAML_CACHE[name])


def _quiet(mapping: dict[str, Any], *, wave: bool) -> dict[str, Any]:
    mapping["measurement_noise"] = 0.0
    for proxy in mapping["proxies"]:
        proxy["noise"] = 0.0
        proxy["burst_prob"] = 0.0
        if not wave:
            proxy["diurnal_amplitude"] = 0.0
    return mapping


@pytest.fixture(scope="module")
def fast_compile():
    """Compile with most XLA optimisations off while a module runs (opt in with
    `pytestmark = pytest.mark.usefixtures("fast_compile")`).

    These tests run tiny workloads on many shapes, so compile time dominates; unoptimised
    programs compile two to three times faster and compute the same values (up to float
    rounding).
    """
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def usecase_mapping() -> Callable[..., dict[str, Any]]:
    """`usecase_mapping("ml", quiet=True, wave=False, sla_ms=80)`: the YAML as a dict, changed.

    quiet: no rate noise, no bursts, no measurement noise; wave=False also flattens the diurnal
    wave, so every proxy sends exactly its `base_rate`.
    """

    def build(name: str, *, quiet: bool = False, wave: bool = True, **changes: Any):
        mapping = _yaml_mapping(name)
        if quiet:
            _quiet(mapping, wave=wave)
        mapping.update(copy.deepcopy(changes))
        return mapping

    return build


@pytest.fixture(scope="module")
def ml() -> EnvParams:
    """ML as shipped (noise included) in episodes of 12 steps."""
    return params_from_usecase(load_usecase("ml"), {"episode_steps": 12})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A compilation cache of the module's own, for the runs it starts as processes: they
    compile the same programs, and each compile costs seconds."""
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture(scope="session")
def quiet_params(usecase_mapping) -> Callable[..., EnvParams]:
    """`quiet_params("ml", env_cfg, wave=False, **yaml_changes)`: noiseless simulator params."""

    def build(name: str, env_cfg: dict[str, Any] | None = None, *, wave: bool = True, **changes):
        mapping = usecase_mapping(name, quiet=True, wave=wave, **changes)
        return params_from_usecase(load_usecase(mapping, source=f"{name}-quiet"), env_cfg)

    return build


@pytest.fixture(scope="session")
def make_state() -> Callable[..., EnvState]:
    """`make_state(params, ready={(k, f, c): n}, routes={(p, f): inst}, ...)`: a hand-built state.

    Everything not given is empty: no pods, every route -1, no backlog, no burst, time 0.
    `pending` maps (k, f, c, slot) -> pods; `backlog` maps (k, f, c) -> requests.
    """

    def build(
        params: EnvParams,
        *,
        ready: dict[tuple[int, int, int], int] | None = None,
        pending: dict[tuple[int, int, int, int], int] | None = None,
        routes: dict[tuple[int, int], int] | None = None,
        backlog: dict[tuple[int, int, int], float] | None = None,
        time: int = 0,
        trace_offset: int = 0,
    ) -> EnvState:
        lay = params.layout
        shape = (lay.clusters, lay.functions, lay.configs)
        ready_a = jnp.zeros(shape, jnp.int32)
        for idx, n in (ready or {}).items():
            ready_a = ready_a.at[idx].set(n)
        pending_a = jnp.zeros((*shape, params.pending_depth), jnp.int32)
        for idx, n in (pending or {}).items():
            pending_a = pending_a.at[idx].set(n)
        routes_a = jnp.full((lay.proxies, lay.functions), -1, jnp.int32)
        for idx, inst in (routes or {}).items():
            routes_a = routes_a.at[idx].set(inst)
        backlog_a = jnp.zeros(shape, jnp.float32)
        for idx, b in (backlog or {}).items():
            backlog_a = backlog_a.at[idx].set(b)
        p = lay.proxies
        return EnvState(
            ready=ready_a,
            pending=pending_a,
            routes=routes_a,
            backlog=backlog_a,
            burst_left=jnp.zeros((p,), jnp.int32),
            burst_level=jnp.ones((p,), jnp.float32),
            trace_offset=jnp.int32(trace_offset),
            time=jnp.int32(time),
            measurement=Measurement(
                rates=jnp.zeros((p,), jnp.float32),
                instance_util=jnp.zeros(shape, jnp.float32),
                cluster_cpu=jnp.zeros((lay.clusters,), jnp.float32),
                latency_s=jnp.zeros((p,), jnp.float32),
            ),
        )

    return build


@pytest.fixture(scope="session")
def jitted() -> SimpleNamespace:
    """Jitted simulator pieces shared by every test, so each shape compiles once per session.

    Each takes `params` as its last argument, as the undecorated function does.
    """
    env = ClusterEnv()
    return SimpleNamespace(
        reset=jax.jit(env.reset),
        step_env=jax.jit(env.step_env),
        get_obs=jax.jit(env.get_obs),
        apply_action=jax.jit(placement.apply_action),
        request_rates=jax.jit(dynamics.request_rates),
        instance_load=jax.jit(placement.instance_load),
        serve=jax.jit(dynamics.serve),
        chain_latency=jax.jit(dynamics.chain_latency),
        cpu_utilisation=jax.jit(dynamics.cpu_utilisation),
    )


def _random_episode(params: EnvParams, steps: int) -> Callable[[jax.Array], dict[str, Any]]:
    """One episode from the `random` start: `steps` steps of random actions (70 % drawn among
    the actions the mask allows, 30 % uniformly over all of them). Pure; jit or vmap it."""
    env = ClusterEnv()
    num_actions = params.layout.num_actions

    def episode(k: jax.Array) -> dict[str, Any]:
        k_reset, k_seq = jax.random.split(k)
        obs, state = env.reset(k_reset, params)

        def body(carry, kk):
            obs, state = carry
            k_mode, k_any, k_valid, k_step = jax.random.split(kk, 4)
            anything = jax.random.randint(k_any, (), 0, num_actions)
            scores = jax.random.uniform(k_valid, (num_actions,))
            allowed = jnp.argmax(jnp.where(obs.action_mask, scores, -1.0))
            action = jnp.where(jax.random.bernoulli(k_mode, 0.7), allowed, anything)
            obs, state, reward, _, _, info = env.step_env(k_step, state, action, params)
            record = {"obs": obs, "state": state, "reward": reward, "action": action}
            record["invalid"] = info["invalid"]
            return (obs, state), record

        start = state
        _, records = jax.lax.scan(body, (obs, state), jax.random.split(k_seq, steps))
        return {**records, "start": start}

    return episode


TRAJECTORY_KEY = 1234


@pytest.fixture(scope="session")
def random_trajectories() -> Callable[..., tuple[EnvParams, Callable, Callable, dict[str, Any]]]:
    """`random_trajectories(name)` -> (params, episode, jitted episode, records).

    The use case as shipped (noise included), `random` start, 16 episodes of 8 steps run one
    by one with the jitted episode (compiled once per use case and shared by every test) from
    `jax.random.split(PRNGKey(TRAJECTORY_KEY), 16)`. records are [16, 8, ...]: obs, state,
    reward, action, invalid after each step, and [16, ...]: "start", the initial state.
    """
    cache: dict[str, tuple[EnvParams, Callable, Callable, dict[str, Any]]] = {}

    def get(name: str):
        if name not in cache:
            params = params_from_usecase(load_usecase(name), {"start": "random"})
            episode = _random_episode(params, steps=8)
            run = jax.jit(episode)
            keys = jax.random.split(jax.random.PRNGKey(TRAJECTORY_KEY), 16)
            runs = [run(k) for k in keys]
            records = jax.tree.map(lambda *xs: jnp.stack(xs), *runs)
            cache[name] = (params, episode, run, records)
        return cache[name]

    return get


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_raises_keyboard_interrupt():
    """Ctrl-C as in a terminal: a runner started in the background inherits SIGINT ignored, and
    then `_thread.interrupt_main` does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def apiserver():
    """A real kube-apiserver for the k8s backend's tests, one per session: the one
    `$HMK8S_TEST_KUBECONFIG` reaches (context `$HMK8S_TEST_CONTEXT`, default `admin`; a bare API
    server, no controllers), else one started from `../shared/kube-apiserver` in a temporary
    folder and stopped at the end; without either the test is skipped."""
    from hmk8s.k8s.emulated import apiserver as real

    given = os.environ.get("HMK8S_TEST_KUBECONFIG")
    if given:
        server = real.ApiServer(Path(given), os.environ.get("HMK8S_TEST_CONTEXT", "admin"))
        real.ensure_pod_metrics_api(server, real.scripts_dir() / "podmetrics-crd.yaml")
        yield server
        return
    if not real.available():
        pytest.skip(f"no API server: {real.scripts_dir()} is absent, HMK8S_TEST_KUBECONFIG unset")
    with (
        tempfile.TemporaryDirectory(prefix="hmk8s-apiserver-") as tmp,
        real.running(Path(tmp)) as server,
    ):
        yield server
