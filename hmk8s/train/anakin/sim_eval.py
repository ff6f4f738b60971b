"""The hmk8s side of training on the simulator: the env as an `EnvSpec`, and the evaluator
that scores every seed's greedy agent beside the HPA baseline on identical episodes (the full
comparison with every baseline is `hmk8s.evaluate`'s job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from hmk8s import sim
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.envs.spec import EnvSpec
from hmk8s.metrics import POLICY_METRIC_NAMES
from hmk8s.policies.baselines import hpa_policy
from hmk8s.policies.q_policy import q_policy
from hmk8s.policies.rollout import evaluate_policy
from hmk8s.train.anakin.loop import Trainer
from hmk8s.train.anakin.run import Evaluator


def _summary(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in POLICY_METRIC_NAMES}


def sim_setup(
    usecase: Mapping[str, Any],
    env_cfg: Mapping[str, Any],
    name: str,
    episodes: int,
    heuristic_bonus: float = 0.0,
) -> tuple[EnvSpec, Evaluator]:
    """The simulator for ``usecase`` (a use-case mapping) and its evaluator; the agent is
    evaluated as deployed, with ``heuristic_bonus`` on the rulebook's action (HAQL)."""
    env, params = sim.make(dict(usecase), dict(env_cfg), name=name)
    encoder = env_cfg["encoder"]

    def evaluator(trainer: Trainer, seed_params: Any, key: jax.Array) -> dict[str, Any]:
        per_seed = []
        for seed in range(jax.tree.leaves(seed_params)[0].shape[0]):
            q_params = jax.tree.map(lambda x, i=seed: x[i], seed_params)
            policy = q_policy(trainer.network.apply, q_params, encoder, heuristic_bonus)
            per_seed.append(_summary(evaluate_policy(env, params, policy, key, episodes)))
        agent = {k: float(np.mean([s[k] for s in per_seed])) for k in POLICY_METRIC_NAMES}
        baselines = {"hpa": _summary(evaluate_policy(env, params, hpa_policy(), key, episodes))}
        return {"eval": {**agent, "per_seed": per_seed}, "baselines": baselines}

    return sim_env_spec(env, params, encoder), evaluator
