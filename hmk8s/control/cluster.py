"""The controller on live clusters: adopt the placement that is there, act on it, delete nothing.

On start the backend finds the hmk8s run in the map's namespaces (the Deployments, their
replicas and the proxies' chain ConfigMaps carrying its run-id label) and takes it as its
mirror, so a restarted controller goes on from where the last one stopped without re-creating
anything. With ``bootstrap`` it writes the simulator's ``minimal`` placement where there is
none. Each step it applies the domain's `apply_action` to the mirror and brings the clusters
to it with the env's `Reconciler` (a dry run sends the same calls with ``dryRun=All`` and
keeps nothing), waits out the step, and reads the clusters back with the env's
`ClusterObserver`, and checks the managed objects against what it applied (`drift`): a
conflict is repaired or held, never overwritten silently. A ConfigMap ``hmk8s-controller``
in any of the namespaces whose ``paused`` is not a YAML ``false`` pauses every change. Writes
happen only while ``leading()`` says this controller holds the namespaces' Lease. Nothing is
deleted on exit: the placement keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from hmk8s.control.changes import Change, after_action, describe, mirror_placement
from hmk8s.control.drift import Conflict, conflicts, read_live, repaired
from hmk8s.control.guard import Health
from hmk8s.control.loop import Outcome, Reading, step_score
from hmk8s.domain.params import EnvParams
from hmk8s.domain.placement import initial_placement, start_state
from hmk8s.domain.state import EnvState
from hmk8s.domain.usecases import UseCase
from hmk8s.k8s.cleanup import runs_present
from hmk8s.k8s.client import ClusterClient, api_errors
from hmk8s.k8s.config import ClusterMap
from hmk8s.k8s.env import ClusterClock
from hmk8s.k8s.observer import ClusterObserver
from hmk8s.k8s.reconcile import Placement, Reconciler, plan
from hmk8s.k8s.retry import RetryStats

log = logging.getLogger(__name__)
SWITCH = "hmk8s-controller"
PAUSED_KEY = "paused"
DEFAULT_RUN_ID = "hmk8s-live"
NOT_LEADING = "not written: this controller does not hold the namespaces' Lease"


class AdoptError(RuntimeError):
    """Nothing (or more than one run) to adopt in the clusters."""


class StopClock:
    """Wall-clock steps that end early when ``stop`` is set (Ctrl-C, SIGTERM; the operator's
    wake-up on an edit); ``tick`` runs after each wait (tests advance their cluster twin)."""

    def __init__(self, stop: threading.Event, tick: Callable[[], None] | None = None) -> None:
        self.stop, self.tick = stop, tick

    def reset(self, key: jax.Array) -> None:
        del key

    def step(self, key: jax.Array, seconds: float) -> None:
        del key
        if seconds > 0:
            self.stop.wait(seconds)
        if self.tick is not None:
            self.tick()


def find_run(clients: Sequence[ClusterClient], run_id: str | None) -> str | None:
    """The run to adopt: ``run_id`` if it has objects here, else the only run that has; None
    when there is nothing to adopt."""
    present = {run for run, n in runs_present(clients).items() if run and n}
    if run_id is not None:
        return run_id if run_id in present else None
    if len(present) > 1:
        raise AdoptError(
            f"the namespaces hold several hmk8s runs ({', '.join(sorted(present))}); "
            "choose one with run_id=<id>"
        )
    return next(iter(present), None)


def routes_of(placement: Placement, params: EnvParams) -> np.ndarray:
    """The domain's routes [P, F] (``k * C + c``, or -1) from the chains a placement holds."""
    lay = params.layout
    routes = np.full((lay.proxies, lay.functions), -1, np.int32)
    for p, hops in placement.chains.items():
        for hop in hops:
            if hop.cluster is not None and hop.config is not None:
                routes[p, hop.function] = hop.cluster * lay.configs + hop.config
    return routes


class ClusterBackend:
    """`hmk8s.control.loop.Backend` over the clusters of a cluster map."""

    def __init__(
        self,
        params: EnvParams,
        usecase: UseCase,
        cmap: ClusterMap,
        clients: Sequence[ClusterClient],
        *,
        run_id: str | None = None,
        bootstrap: bool = False,
        dry_run: bool = False,
        clock: ClusterClock | None = None,
        step_seconds: float | None = None,
        seed: int = 0,
        on_conflict: str = "repair",
        leading: Callable[[], bool] | None = None,
    ) -> None:
        cmap.check_against(usecase)
        self.params, self.usecase, self.cmap, self.clients = params, usecase, cmap, clients
        self.dry_run = dry_run
        self.on_conflict = on_conflict
        self.leading = leading
        self.spec_paused = False  # the operator's `paused` field, beside the ConfigMap switch
        self.clock: ClusterClock = clock or StopClock(threading.Event())
        self.step_seconds = cmap.step_duration(usecase) if step_seconds is None else step_seconds
        self.homes = [p.home for p in usecase.proxies]
        self._key = jax.random.PRNGKey(seed)
        found = find_run(clients, run_id)
        if found is None and not bootstrap:
            where = ", ".join(c.namespace for c in clients)
            raise AdoptError(
                f"no hmk8s placement{f' of run {run_id}' if run_id else ''} in namespaces "
                f"{where}; bootstrap=true creates a minimal one"
            )
        self.run_id = found or run_id or cmap.run_id or DEFAULT_RUN_ID
        self.reconciler = Reconciler(clients, cmap, usecase, self.run_id)
        self.observer = ClusterObserver(clients, cmap, params, self.run_id, self.homes)
        self._begin()
        self.reconciler.discover()
        self.created: list[Change] = []
        self.mirror = self._adopt()
        if found is None:
            self._bootstrap()
        self._errors: list[str] = []
        self.conflicts: list[Conflict] = []
        self._served: np.ndarray | None = None
        self._step_started: float | None = None

    # -- start ---------------------------------------------------------------------------------

    def _template(self) -> EnvState:
        self._key, k_reset = jax.random.split(self._key)
        return _start_state(k_reset, self.params)

    def _adopt(self) -> EnvState:
        """The mirror of the placement found: its replicas, routes and ready pods."""
        lay = self.params.layout
        applied = self.reconciler.applied
        replicas = np.zeros((lay.clusters, lay.functions, lay.configs), np.int32)
        for (k, f, c), n in applied.replicas.items():
            replicas[k, f, c] = n
        template = self._template()
        mirror = template.replace(
            ready=jnp.asarray(replicas),
            pending=jnp.zeros_like(template.pending),
            routes=jnp.asarray(routes_of(applied, self.params)),
        )
        ready, errors = self.observer.read_ready(mirror)
        if errors:
            log.warning("adopting run %s: %s", self.run_id, "; ".join(errors))
        pending = np.zeros(np.asarray(mirror.pending).shape, np.int32)
        pending[..., 0] = replicas - ready
        log.info("adopted run %s: %d instances", self.run_id, len(applied.replicas))
        return mirror.replace(ready=jnp.asarray(ready), pending=jnp.asarray(pending))

    def _bootstrap(self) -> None:
        """Write the simulator's ``minimal`` start: one default-config pod of each chain
        function on proxy 0's home cluster, every proxy routed to it."""
        self._key, k_place = jax.random.split(self._key)
        ready, routes = initial_placement(k_place, self.params.replace(start="minimal"))
        self.mirror = self.mirror.replace(ready=ready, routes=routes)
        desired = mirror_placement(self.mirror, self.params)
        self.created = self._plan(desired)
        errors = self.reconciler.apply(desired)
        if errors:
            raise AdoptError("bootstrap failed: " + "; ".join(errors))
        self._key, k_clock = jax.random.split(self._key)
        self.clock.reset(k_clock)

    def _plan(self, desired: Placement) -> list[Change]:
        """What reconciling to ``desired`` changes (retries of failed calls included)."""
        applied = self.reconciler.applied
        return describe(plan(desired, applied, self.homes), applied, self.cmap.chain_configmap)

    # -- the backend -----------------------------------------------------------------------------

    def _begin(self) -> None:
        for client in self.clients:
            client.retrier.stats = RetryStats()

    def paused(self) -> tuple[bool, list[str]]:
        """Whether the kill switch is on: the spec's, or the ConfigMap in any namespace. A
        switch that cannot be read, or whose ``paused`` is not a YAML boolean, counts as on."""
        if self.spec_paused:
            return True, []
        errors = []
        for client in self.clients:
            try:
                switch = client.read("ConfigMap", SWITCH)
            except api_errors() as exc:
                errors.append(f"read {client.namespace}/{SWITCH}: {exc}")
                continue
            if switch is not None and switch_says_paused((switch.data or {}).get(PAUSED_KEY)):
                return True, errors
        return bool(errors), errors

    def _check(self, paused: bool) -> tuple[list[str], bool, list[str]]:
        """Compare the managed objects with what was applied: (conflicts, repairing, read
        errors). Repairing tells the reconciler the live values, so this step's plan writes
        the applied ones back; an unreadable chain, a pause or ``on_conflict=hold`` holds."""
        if self.reconciler.unreadable:  # adopted with a chain it could not read: try again
            self.reconciler.discover()
            self.mirror = self._adopt()
        live = read_live(self.clients, self.cmap, self.homes, self.run_id)
        found = conflicts(
            self.reconciler.applied, live, self.cmap, self.homes, self.reconciler.unreadable
        )
        for c in found:
            log.warning("conflict: %s", c)
        repairing = bool(found) and self.on_conflict == "repair" and not paused
        repairing = repairing and all(c.readable for c in found) and not self.reconciler.unreadable
        if repairing:
            self.reconciler.applied = repaired(self.reconciler.applied, found, self.cmap)
        self.conflicts = found
        return [str(c) for c in found], repairing, live.errors

    def read_now(self) -> None:
        """Let the next `observe` read at once instead of waiting out the step."""
        self._step_started = None

    def observe(self) -> Reading:
        """Wait out the rest of the step (not before the first reading), then read."""
        first = self._step_started is None
        if not first:
            self._key, k_advance = jax.random.split(self._key)
            left = self.step_seconds - (time.monotonic() - self._step_started)
            self.clock.step(k_advance, max(0.0, left))
        self._begin()
        sensed = self.observer.observe(self.mirror, self._served)
        self.mirror = sensed.mirror
        paused, switch_errors = self.paused()
        found, repairing, live_errors = self._check(paused)
        health = Health(
            paused=paused,
            assumed=tuple(f"{k} {v}" for k, v in sensed.assumed.items() if v),
            api_errors=tuple(self._errors + sensed.errors + switch_errors + live_errors),
            conflicts=tuple(found),
            repairing=repairing,
        )
        obs = jax.device_get(sensed.obs)
        self._step_started = time.monotonic()
        if first:
            return Reading(obs, health=health)
        reward_value, ratio = step_score(obs, self.params)
        return Reading(obs, reward=reward_value, latency_ratio=ratio, health=health)

    def apply(self, action: int) -> Outcome:
        """Plan the action on the mirror and reconcile the clusters to it; failed calls stay in
        the reconciler's diff and are retried next step. A dry run keeps neither. Without the
        Lease, or while a chain adopted unreadable is unknown, nothing is written."""
        started = time.perf_counter()
        if self.leading is not None and not self.leading():
            return Outcome(False, [], [NOT_LEADING], dry_run=self.dry_run)
        if self.reconciler.unreadable:  # a chain it could not read: its routes are unknown
            return Outcome(False, [], dry_run=self.dry_run)
        before = self.mirror
        self._key, k_action = jax.random.split(self._key)
        mirror, invalid = after_action(k_action, self.mirror, action, self.params)
        desired = mirror_placement(mirror, self.params)
        changes = self._plan(desired)
        errors = self.reconciler.apply(desired, dry_run=self.dry_run)
        if not self.dry_run:
            self.mirror = mirror.replace(time=mirror.time + 1)
            self._served = np.asarray(self.mirror.ready)
        self._errors = errors
        noop = action < 0 or action == self.params.layout.noop_index
        return Outcome(
            desired != mirror_placement(before, self.params),
            changes,
            errors,
            invalid=invalid and not noop,
            dry_run=self.dry_run,
            seconds=time.perf_counter() - started,
        )


def switch_says_paused(value: object) -> bool:
    """The ConfigMap switch's ``paused`` value: YAML's false (false, no, off) runs, YAML's true
    pauses, and so does anything else (a typo, a missing key), so a switch never fails open."""
    try:
        parsed = yaml.safe_load(value) if isinstance(value, str) else None
    except yaml.YAMLError:
        return True
    return parsed is not False


_start_state = jax.jit(start_state)
