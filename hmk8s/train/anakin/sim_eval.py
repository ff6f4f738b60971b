"""The hmk8s side of training on the simulator: the env as an `EnvSpec`, and the evaluator
that scores every seed's greedy agent beside the HPA baseline on identical episodes (the full
comparison with every baseline is `hmk8s.evaluate`'s job).

The agents' rollout is one program, compiled once, vmapped over the seeds and the episodes
with the weights as its argument, and kept in the program cache; HPA's score depends on none
of the training, so it comes from the score cache (`hmk8s.train.cache`) when an earlier run
computed it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from hmk8s import sim
from hmk8s.agents.config import deployed_bonus
from hmk8s.domain.metrics import POLICY_METRIC_NAMES, summarise
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.envs.spec import EnvSpec
from hmk8s.policies.baselines import hpa_policy
from hmk8s.policies.q_policy import make_seed_rollout
from hmk8s.policies.rollout import evaluate_policy
from hmk8s.train.anakin.loop import Trainer
from hmk8s.train.anakin.run import Evaluator
from hmk8s.train.cache import ProgramCache, ScoreCache, tree_digest
from hmk8s.train.config import RunSpec


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
    programs = (programs or ProgramCache(None, {})).within(env=tree_digest(params))

    def evaluator(trainer: Trainer, seed_params: Any, key: jax.Array) -> dict[str, Any]:
        run = make_seed_rollout(env, params, trainer.network.apply, episodes, encoder)
        args = (seed_params, key, heuristic_bonus)
        records = jax.device_get(programs.compile(f"rollout/{episodes}", run, *args)(*args))
        seeds = jax.tree.leaves(seed_params)[0].shape[0]
        per_seed = [
            _summary(summarise(jax.tree.map(lambda x, i=i: x[i], records))) for i in range(seeds)
        ]
        agent = {k: float(np.mean([s[k] for s in per_seed])) for k in POLICY_METRIC_NAMES}
        hpa = scores.get_or_compute(
            {"policy": "hpa", "episodes": episodes},
            params,
            key,
            lambda: _summary(evaluate_policy(env, params, hpa_policy(), key, episodes)),
        )
        return {"eval": {**agent, "per_seed": per_seed}, "baselines": {"hpa": hpa}}

    return sim_env_spec(env, params, encoder), evaluator, programs
