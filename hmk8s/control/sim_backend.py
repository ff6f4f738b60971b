"""The controller on the simulator, for rehearsals and tests.

The episode is the one `hmk8s.policies.rollout.evaluate_policy(env, params, policy, key, 1)` plays,
step for step: the backend runs that very `rollout` (same compiled dynamics, same keys) on a
background thread with a policy that hands each observation to the controller and waits for
its action. So with the guards off, the controller's actions and rewards are the evaluation's,
exactly; with them on, the guard and the fallback are rehearsed on the same load.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmk8s.control.agent import Agent
from hmk8s.control.changes import (
    after_action,
    mirror_from,
    mirror_placement,
    placement_changes,
    placement_from,
)
from hmk8s.control.loop import Outcome, Reading, step_score
from hmk8s.domain.observation import Observation
from hmk8s.domain.params import EnvParams
from hmk8s.policies.baselines import Policy
from hmk8s.policies.rollout import rollout
from hmk8s.sim.env import ClusterEnv
from hmk8s.train.anakin.sim_eval import greedy_rollout

POLL_S = 0.05


def greedy_records(agent: Agent, key: jax.Array, episodes: int) -> dict[str, np.ndarray]:
    """The agent's greedy records on ``episodes`` episodes of ``key`` ([episodes, steps, ...],
    `hmk8s.policies.rollout.rollout`'s keys), from the one greedy evaluator (`greedy_rollout`):
    the episodes and numbers of the training summary's evaluation, in a program compiled once
    per process for every agent of the same shape. A rehearsal without the guards plays the
    same actions."""
    m = agent.manifest
    run = greedy_rollout(ClusterEnv(), agent.env_params, agent.network, episodes, m.env["encoder"])
    one_seed = jax.tree.map(lambda x: jnp.asarray(x)[None], agent.q_params)
    return jax.tree.map(lambda x: np.asarray(x)[0], run(one_seed, key, m.bonus))


class SimBackend:
    """``rollout(env, params, <the controller>, key, 1)``, stepped by the controller."""

    def __init__(self, params: EnvParams, key: jax.Array, *, dry_run: bool = False) -> None:
        self.params = params
        self.key = key
        self.dry_run = dry_run
        self.records: dict[str, np.ndarray] | None = None
        self._env = ClusterEnv()
        self._like = jax.jit(self._env.reset)(key, params)[1]
        self._homes = [int(h) for h in np.asarray(params.home)]
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._actions: queue.Queue[int] = queue.Queue()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: Observation | None = None
        self._next: Reading | None = None

    # -- the rollout thread ------------------------------------------------------------------

    def _run(self) -> None:
        policy = Policy(init=lambda params: jnp.zeros((), jnp.int32), act=self._act)
        try:
            records = rollout(self._env, self.params, policy, self.key, 1)
            self._inbox.put(("end", jax.device_get(records)))
        except BaseException as err:
            self._inbox.put(("error", err))

    def _act(self, key: jax.Array, pstate: Any, obs: Observation, params: EnvParams):
        shape = jax.ShapeDtypeStruct((), jnp.int32)
        action = jax.pure_callback(self._ask, shape, obs, vmap_method="sequential")
        return action, pstate

    def _ask(self, obs: Observation) -> np.ndarray:
        """Called by the compiled rollout once a step: the controller's action for ``obs``."""
        noop = np.int32(self.params.layout.noop_index)
        if self._closed.is_set():
            return noop
        self._inbox.put(("obs", obs))
        while not self._closed.is_set():
            try:
                return np.int32(self._actions.get(timeout=POLL_S))
            except queue.Empty:
                continue
        return noop

    # -- the backend -------------------------------------------------------------------------

    def _receive(self) -> Reading:
        kind, payload = self._inbox.get()
        if kind == "error":
            raise payload
        if kind == "end":
            self.records = {k: np.asarray(v)[0] for k, v in payload.items()}
            return Reading(
                None,
                reward=float(self.records["reward"][-1]),
                latency_ratio=float(self.records["latency_ratio"][-1]),
            )
        if self._current is None:
            return Reading(payload)
        reward_value, ratio = step_score(payload, self.params)
        return Reading(payload, reward=reward_value, latency_ratio=ratio)

    def observe(self) -> Reading:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sim-rollout", daemon=True)
            self._thread.start()
        reading = self._next if self._next is not None else self._receive()
        self._next = None
        self._current = reading.obs
        return reading

    def apply(self, action: int) -> Outcome:
        """Step the simulator (with the no-op in a dry run) and describe what the action
        changes: from the placement the next observation shows, or, when there is none (a dry
        run, the last step), as the domain's `apply_action` plans it."""
        obs = self._current
        if obs is None:
            raise RuntimeError("observe() before apply()")
        noop = self.params.layout.noop_index
        self._actions.put(noop if self.dry_run else action)
        self._next = self._receive()
        mask = np.asarray(obs.action_mask)
        invalid = not (0 <= action < mask.shape[0] and mask[action])
        if self._next.obs is not None and not self.dry_run:
            after = placement_from(self._next.obs, self.params)
        else:
            planned, _ = after_action(
                jax.random.PRNGKey(0), mirror_from(obs, self._like), action, self.params
            )
            after = mirror_placement(planned, self.params)
        before = placement_from(obs, self.params)
        changes = placement_changes(before, after, self._homes)
        return Outcome(
            after != before, changes, invalid=invalid and action != noop, dry_run=self.dry_run
        )

    def close(self) -> None:
        """Let the rollout run out with no-ops and wait for it."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
