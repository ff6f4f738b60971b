"""The gymnasium environment over real clusters, with the simulator's observation, actions and
reward.

The env keeps a mirror of the simulator's state for the placement, applies the domain's
`apply_action` to it (same keys as the simulator, so the same random re-routes), reconciles the
clusters to the mirror through the API, lets `step_seconds` of cluster time pass, and reads
ready replicas, PodMetrics and proxy latency back into a `Measurement`. Observation, mask,
encoders, reward and heuristic inputs are the domain's own functions.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import signal
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from hmk8s.domain.encoders import get_encoder
from hmk8s.domain.episode import check_steppable
from hmk8s.domain.metrics import host_metrics, step_metrics
from hmk8s.domain.observation import Observation, chain_latency_ratio
from hmk8s.domain.placement import apply_action, start_state
from hmk8s.domain.reward import reward as reward_fn
from hmk8s.domain.settings import ENV_DEFAULTS, params_from_usecase
from hmk8s.domain.state import EnvState, observe
from hmk8s.domain.usecases import UseCase, load_usecase
from hmk8s.k8s import objects
from hmk8s.k8s.cleanup import CleanupReport, delete_labelled, runs_present
from hmk8s.k8s.client import ClusterAccessError, connect
from hmk8s.k8s.config import ClusterMap, load_cluster_map
from hmk8s.k8s.observer import ClusterObserver
from hmk8s.k8s.reconcile import Reconciler, placement_of
from hmk8s.k8s.retry import RetryStats

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[KubernetesClusterEnv] = weakref.WeakSet()


class ClusterClock(Protocol):
    """How cluster time passes. A real cluster ignores the keys; an emulated twin plays the
    simulator's dynamics with them."""

    def reset(self, key: jax.Array) -> None:
        """The initial placement has been written."""
        ...

    def step(self, key: jax.Array, seconds: float) -> None:
        """The step's changes have been written; return once `seconds` have passed."""
        ...


class WallClock:
    """Real clusters: a step is `seconds` of wall-clock time."""

    def reset(self, key: jax.Array) -> None:
        del key

    def step(self, key: jax.Array, seconds: float) -> None:
        del key
        if seconds > 0:
            time.sleep(seconds)


class KubernetesClusterEnv(gym.Env):
    """`hmk8s/<USECASE>-v0` with `backend="k8s"`: the simulator's env, acted out on clusters.

    `reset`/`step` return what `SimClusterEnv` returns; `info` also carries `api_errors` (the
    step's failed operations, retried next step, and failed readings), `api` (attempts,
    retries, waits) and `assumed` (readings filled conservatively).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        usecase: str | Path | Mapping[str, Any] | UseCase = "ml",
        env_cfg: Mapping[str, Any] | None = None,
        backend_cfg: str | Path | Mapping[str, Any] | ClusterMap | None = None,
        *,
        encoder: str | None = None,
        noop: bool | None = None,
        start: str | None = None,
        episode_steps: int | None = None,
        clock: ClusterClock | None = None,
    ) -> None:
        self.usecase = usecase if isinstance(usecase, UseCase) else load_usecase(usecase)
        overrides = {
            "encoder": encoder,
            "noop": noop,
            "start": start,
            "episode_steps": episode_steps,
        }
        cfg = {**dict(env_cfg or {}), **{k: v for k, v in overrides.items() if v is not None}}
        self.params = params_from_usecase(self.usecase, cfg)
        self.cmap = (
            backend_cfg if isinstance(backend_cfg, ClusterMap) else load_cluster_map(backend_cfg)
        )
        self.cmap.check_against(self.usecase)
        self.run_id = self.cmap.run_id or f"run-{secrets.token_hex(4)}"
        self.clock: ClusterClock = clock or WallClock()
        self.step_seconds = self.cmap.step_duration(self.usecase)
        self.clients = connect(
            self.cmap, writes=objects.samples(self.cmap, self.usecase, self.run_id)
        )
        _check_namespaces_free(self.clients, self.run_id)
        self.homes = [p.home for p in self.usecase.proxies]
        self.reconciler = Reconciler(self.clients, self.cmap, self.usecase, self.run_id)
        self.observer = ClusterObserver(
            self.clients, self.cmap, self.params, self.run_id, self.homes
        )
        self._encoder = _jitted_encoder(cfg.get("encoder", ENV_DEFAULTS["encoder"]))
        first = jax.eval_shape(
            lambda k: self._encode(observe(start_state(k, self.params), self.params)),
            jax.random.PRNGKey(0),
        )
        dim = int(first.shape[0])
        self.observation_space = gym.spaces.Box(0.0, 1.0, (dim,), np.float32)
        self.action_space = gym.spaces.Discrete(self.params.layout.num_actions)
        self._key = jax.random.PRNGKey(0)
        self._mirror: EnvState | None = None
        self._ended = False
        self._closed = False
        self._failed_steps = 0
        self.structured_observation: Observation | None = None
        _LIVE.add(self)
        install_exit_hooks()

    @property
    def mirror(self) -> EnvState | None:
        """The env's picture of the clusters: the placement it applied and, after a step, the
        `measurement` read from them (None before the first reset)."""
        return self._mirror

    def adopt_replicas(self) -> None:
        """Take the clusters' word for every instance's replica count (`spec.replicas`), as
        when Kubernetes' own HPA scales the Deployments: the mirror and what counts as applied
        follow, so the next step's reconcile changes nothing the HPA did."""
        check_steppable(self._mirror is not None, self._ended)
        replicas = self.observer.read_replicas()
        ready = np.minimum(np.asarray(self._mirror.ready), replicas)
        pending = np.zeros(np.asarray(self._mirror.pending).shape, np.int32)
        pending[..., 0] = replicas - ready
        self._mirror = self._mirror.replace(ready=jnp.asarray(ready), pending=jnp.asarray(pending))
        self.reconciler.discover()

    # -- gymnasium API -------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._check_open()
        self._key = jax.random.PRNGKey(int(self.np_random.integers(0, 2**31 - 1)))
        self._key, k_reset = jax.random.split(self._key)
        self._mirror = _start_state(k_reset, self.params)
        self._ended = False
        self._begin_step()
        self.reconciler.discover()
        errors = self._reconcile()
        self.clock.reset(k_reset)
        not_ready = self._wait_ready()
        obs, extra = self._observe(errors, served=None)
        extra["not_ready"] = not_ready
        return np.asarray(self._encode(obs), np.float32), {
            "action_mask": np.asarray(obs.action_mask, bool),
            **extra,
        }

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        check_steppable(self._mirror is not None, self._ended)
        self._check_open()
        action = self.params.layout.check(action)
        started = time.monotonic()
        self._key, k_step = jax.random.split(self._key)
        k_action, k_advance = jax.random.split(k_step)
        self._mirror, invalid = _apply_action(
            k_action, self._mirror, jnp.int32(action), self.params
        )
        self._mirror = self._mirror.replace(time=self._mirror.time + 1)
        self._begin_step()
        errors = self._reconcile()
        served = np.asarray(self._mirror.ready)
        self.clock.step(k_advance, max(0.0, self.step_seconds - (time.monotonic() - started)))
        obs, extra = self._observe(errors, served)
        ratio = chain_latency_ratio(obs)
        pods = obs.pods.sum()
        r = reward_fn(
            pods,
            ratio,
            alpha=self.params.alpha,
            beta=self.params.beta,
            pods_max=self.params.pods_max,
        )
        info = {
            "action_mask": np.asarray(obs.action_mask, bool),
            **host_metrics(step_metrics(ratio, pods, invalid)),
            **extra,
        }
        self._check_api(extra["api_errors"])
        truncated = int(self._mirror.time) >= self.params.episode_steps
        self._ended = truncated
        return np.asarray(self._encode(obs), np.float32), float(r), False, truncated, info

    def _check_api(self, errors: list[str]) -> None:
        """Stop rather than train on filled-in readings once the API or a reading source (probes,
        Prometheus, the metrics API) has failed on ``max_failed_steps`` steps in a row (a dead
        API server, an unreachable Prometheus, a namespace deleted under the run)."""
        self._failed_steps = self._failed_steps + 1 if errors else 0
        if self._failed_steps >= self.cmap.max_failed_steps:
            raise ClusterAccessError(
                f"run {self.run_id}: the Kubernetes API or a reading failed on "
                f"{self._failed_steps} steps in a row (last: {errors[-1]}); stopping "
                "(backend.max_failed_steps)"
            )

    def close(self) -> CleanupReport | None:
        """Delete every object of this run; idempotent."""
        if self._closed:
            return None
        self._closed = True
        _LIVE.discard(self)
        report = delete_labelled(
            self.clients,
            self.run_id,
            wait_s=self.cmap.ready_timeout_s,
            poll_s=self.cmap.poll_interval_s,
        )
        log.info("run %s cleaned up: %s", self.run_id, report.deleted)
        return report

    def __enter__(self) -> KubernetesClusterEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the shell around the domain -------------------------------------------------------------

    def _encode(self, obs: Observation) -> jax.Array:
        return self._encoder(obs, self.params)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the environment is closed")

    def _begin_step(self) -> None:
        for client in self.clients:
            client.retrier.stats = RetryStats()

    def _desired(self):
        return placement_of(
            np.asarray(self._mirror.replicas), np.asarray(self._mirror.routes), self.params.chain
        )

    def _reconcile(self) -> list[str]:
        return self.reconciler.apply(self._desired())

    def _wait_ready(self) -> bool:
        """Bounded wait until every desired replica is ready; True when it gave up waiting."""
        deadline = time.monotonic() + self.cmap.ready_timeout_s
        want = np.asarray(self._mirror.replicas)
        while True:
            ready, errors = self.observer.read_ready(self._mirror)
            if not errors and np.array_equal(ready, want):
                return False
            if time.monotonic() >= deadline:
                log.warning(
                    "run %s: placement not ready after %.0fs",
                    self.run_id,
                    self.cmap.ready_timeout_s,
                )
                return True
            time.sleep(self.cmap.poll_interval_s)

    def _observe(
        self, errors: list[str], served: np.ndarray | None
    ) -> tuple[Observation, dict[str, Any]]:
        """Read the clusters into the mirror and the observation (see `ClusterObserver`)."""
        sensed = self.observer.observe(self._mirror, served)
        self._mirror, obs = sensed.mirror, sensed.obs
        self.structured_observation = obs
        stats = [c.retrier.stats.as_dict() for c in self.clients]
        extra = {
            "api_errors": errors + sensed.errors,
            "api": {
                "attempts": sum(s["attempts"] for s in stats),
                "retries": sum(s["retries"] for s in stats),
                "conflicts": sum(s["conflicts"] for s in stats),
                "waited_s": round(sum(s["waited_s"] for s in stats), 3),
            },
            "assumed": sensed.assumed,
            "run_id": self.run_id,
        }
        return obs, extra


def _check_namespaces_free(clients: list, run_id: str) -> None:
    """Instance names are per namespace, so two runs cannot share one; objects of another run
    are a run in progress or the leftovers of one that was killed."""
    others = {run: n for run, n in runs_present(clients).items() if run != run_id}
    if others:
        where = ", ".join(sorted({c.namespace for c in clients}))
        listing = ", ".join(f"{run or '<no run id>'} ({n} objects)" for run, n in others.items())
        raise ClusterAccessError(
            f"namespaces {where} hold objects of other runs: {listing}; stop that run or remove "
            "them with scripts/cleanup.py --run-id <id>"
        )


# Compiled once per process, not per env: params are arguments, not closed over.
_start_state = jax.jit(start_state)
_apply_action = jax.jit(apply_action)
_ENCODERS: dict[str, Any] = {}


def _jitted_encoder(name: str) -> Any:
    if name not in _ENCODERS:
        _ENCODERS[name] = jax.jit(get_encoder(name))
    return _ENCODERS[name]


_hooks = {"atexit": False, "sigterm": False}


def _close_all() -> None:
    for env in list(_LIVE):
        try:
            env.close()
        except Exception as exc:
            log.error(
                "cleanup of run %s failed: %s; remove its objects with python scripts/cleanup.py "
                "--run-id %s",
                env.run_id,
                exc,
                env.run_id,
            )


def install_exit_hooks() -> None:
    """Crash and Ctrl-C end in interpreter exit, where `atexit` cleans up; SIGTERM is turned
    into `SystemExit` (when nobody else handles it) so it takes the same path. Signal handlers
    can only be set from the main thread: an env built elsewhere leaves that to a later one."""
    if not _hooks["atexit"]:
        atexit.register(_close_all)
        _hooks["atexit"] = True
    if not _hooks["sigterm"] and threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_exit)
        _hooks["sigterm"] = True


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


__all__ = [
    "ClusterAccessError",
    "ClusterClock",
    "KubernetesClusterEnv",
    "WallClock",
    "connect",
    "install_exit_hooks",
]
