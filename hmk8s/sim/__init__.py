"""The embedded JAX simulator of the clusters (the default backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hmk8s.domain.params import EnvParams
from hmk8s.domain.settings import params_from_usecase
from hmk8s.domain.state import EnvState
from hmk8s.domain.usecases import UseCase, load_usecase
from hmk8s.sim.env import ClusterEnv

__all__ = ["ClusterEnv", "EnvParams", "EnvState", "make"]


def make(
    usecase: str | Path | Mapping[str, Any] | UseCase,
    env_cfg: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> tuple[ClusterEnv, EnvParams]:
    """The functional env and its params for a use case (name, YAML path, mapping or UseCase)."""
    if not isinstance(usecase, UseCase):
        usecase = load_usecase(usecase, source=name)
    return ClusterEnv(), params_from_usecase(usecase, env_cfg)
