"""The greedy evaluator on the simulator, and the hmk8s side of training on it: the env as an
`EnvSpec`, and the evaluator that scores every seed's greedy agent beside the HPA baseline on
identical episodes (the full comparison with every baseline is `hmk8s.evaluate`'s job).

`greedy_rollout` is the one greedy evaluation of trained agents on the simulator: the
training summary, the evaluation's curves, deployed weights, held-out and shifted-load
scores, time to quality, a scenario's phases and a loaded agent all call it. Its program
(`hmk8s.policies.rollout.make_seed_rollout`) is vmapped over the seeds and the episodes
with the weights and the rulebook's weight as arguments, and compiled once per process for a
simulator, network and episode count, however many runs, agents and curve points use it.
HPA's score depends on none of the training, so it comes from the score cache
(`hmk8s.train.cache`) when an earlier run computed it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmk8s import sim
from hmk8s.agents.config import deployed_bonus
from hmk8s.agents.network import QNetwork
from hmk8s.domain.metrics import POLICY_METRIC_NAMES, summarise
from hmk8s.domain.params import EnvParams
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.envs.spec import EnvSpec
from hmk8s.policies.baselines import hpa_policy
from hmk8s.policies.rollout import evaluate_policy, make_seed_rollout
from hmk8s.sim.env import ClusterEnv
from hmk8s.train.anakin.loop import Trainer
from hmk8s.train.anakin.run import Evaluator
from hmk8s.train.cache import ProgramCache, ScoreCache, tree_digest
from hmk8s.train.config import RunSpec


class GreedyRollout:
    """``run(seed_params, key, heuristic_bonus=0.0, shifts=None)``: `make_seed_rollout`'s
    records of every seed's greedy agent, [seeds, episodes, steps, ...] (or [scenarios, seeds,
    ...] on the shifted loads ``shifts``); one compiled program per argument signature, kept
    in ``programs`` between runs."""

    def __init__(self, jitted: Any, programs: ProgramCache, name: str) -> None:
        self._jitted, self._programs, self._name = jitted, programs, name
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()  # the evaluation's agents train (and score) in threads

    def __call__(
        self,
        seed_params: Any,
        key: jax.Array,
        heuristic_bonus: Any = 0.0,
        shifts: dict[str, jax.Array] | None = None,
    ) -> dict[str, jax.Array]:
        args = (seed_params, key, jnp.asarray(heuristic_bonus, jnp.float32), shifts)
        signature = self._programs.key(self._name, args)
        with self._lock:
            if signature not in self._compiled:
                compiled = self._programs.compile(self._name, self._jitted, *args)
                self._compiled[signature] = compiled
        return self._compiled[signature](*args)


#: this process's greedy evaluators, by what their program closes over (`greedy_rollout`)
_ROLLOUTS: dict[str, GreedyRollout] = {}


def greedy_rollout(
    env: ClusterEnv,
    params: EnvParams,
    network: QNetwork,
    episodes: int,
    encoder: str,
    programs: ProgramCache | None = None,
) -> GreedyRollout:
    """The greedy evaluator of ``network``'s agents on ``episodes`` episodes of ``params``:
    the same object, so the same compiled program, for every caller in this process that
    asks for the same simulator parameters (by content), network shape, episodes and encoder.
    ``programs`` keeps the program between runs (None: compiled once per process)."""
    shape = {f.name: getattr(network, f.name) for f in dataclasses.fields(network)}
    shape = {k: v for k, v in shape.items() if k not in ("parent", "name")}
    what = {"env": tree_digest(params), "network": shape, "episodes": episodes}
    key = json.dumps({**what, "type": type(env).__qualname__, "encoder": encoder}, default=str)
    if key not in _ROLLOUTS:
        jitted = make_seed_rollout(env, params, network.apply, episodes, encoder)
        kept = (programs or ProgramCache(None, {})).within(env=what["env"], encoder=encoder)
        _ROLLOUTS[key] = GreedyRollout(jitted, kept, f"rollout/{episodes}")
    return _ROLLOUTS[key]


def seed_metrics(records: Mapping[str, Any]) -> list[dict[str, float]]:
    """Each seed's policy metrics (`POLICY_METRIC_NAMES`, averaged over its episodes and
    steps) from a `GreedyRollout`'s records."""
    records = jax.device_get(records)
    seeds = jax.tree.leaves(records)[0].shape[0]
    return [_summary(summarise(jax.tree.map(lambda x, i=i: x[i], records))) for i in range(seeds)]


def _summary(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in POLICY_METRIC_NAMES}


def sim_setup(
    run: RunSpec, scores: ScoreCache | None = None, programs: ProgramCache | None = None
) -> tuple[EnvSpec, Evaluator, ProgramCache]:
    """The simulator of the run's use case, its evaluator on ``run.config.eval.episodes``
    episodes and ``programs`` for programs on it (keyed by its parameters too, the trace's
    content included); the agent is evaluated as deployed, with `deployed_bonus` on the
    rulebook's action (HAQL). ``scores`` keeps HPA's score between runs, ``programs`` the
    agents' rollout (None: neither is kept)."""
    env, params = sim.make(run.usecase, dataclasses.asdict(run.config.env))
    encoder = run.config.env.encoder
    episodes = run.config.eval.episodes
    heuristic_bonus = deployed_bonus(run.haql)
    scores = scores or ScoreCache(None)
    base = programs or ProgramCache(None, {})
    programs = base.within(env=tree_digest(params))

    def evaluator(trainer: Trainer, seed_params: Any, key: jax.Array) -> dict[str, Any]:
        rollout = greedy_rollout(env, params, trainer.network, episodes, encoder, base)
        per_seed = seed_metrics(rollout(seed_params, key, heuristic_bonus))
        agent = {k: float(np.mean([s[k] for s in per_seed])) for k in POLICY_METRIC_NAMES}
        hpa = scores.get_or_compute(
            {"policy": "hpa", "episodes": episodes},
            params,
            key,
            lambda: _summary(evaluate_policy(env, params, hpa_policy(), key, episodes)),
        )
        return {"eval": {**agent, "per_seed": per_seed}, "baselines": {"hpa": hpa}}

    return sim_env_spec(env, params, encoder), evaluator, programs
