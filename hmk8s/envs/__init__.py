"""Gymnasium environments, registered as hmk8s/EHR-v0, hmk8s/ML-v0 and hmk8s/STREAM-v0.

Registration names the entry point by its path, so importing hmk8s (or `hmk8s.agents`) loads
no environment: `gym.make` imports `hmk8s.envs.gym_env` on first use.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from hmk8s.domain.usecases import available_usecases

#: The gymnasium id of every shipped use case: ``hmk8s/<NAME>-v0``.
ENV_IDS = {usecase: f"hmk8s/{usecase.upper()}-v0" for usecase in available_usecases()}
ENTRY_POINT = "hmk8s.envs.gym_env:make_env"


def register_envs() -> None:
    for usecase, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs={"usecase": usecase})


def __getattr__(name: str) -> Any:
    if name in ("SimClusterEnv", "make_env"):
        from hmk8s.envs import gym_env

        return getattr(gym_env, name)
    raise AttributeError(f"module 'hmk8s.envs' has no attribute {name!r}")


__all__ = ["ENV_IDS", "SimClusterEnv", "make_env", "register_envs"]
