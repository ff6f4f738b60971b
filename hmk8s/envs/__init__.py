"""Gymnasium environments, registered as hmk8s/EHR-v0, hmk8s/ML-v0 and hmk8s/STREAM-v0."""

from __future__ import annotations

import gymnasium as gym

from hmk8s.envs.gym_env import SimClusterEnv, make_env

ENV_IDS = {"ehr": "hmk8s/EHR-v0", "ml": "hmk8s/ML-v0", "stream": "hmk8s/STREAM-v0"}


def register_envs() -> None:
    for usecase, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=make_env, kwargs={"usecase": usecase})


__all__ = ["ENV_IDS", "SimClusterEnv", "make_env", "register_envs"]
