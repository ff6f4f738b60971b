"""The shipped Hydra configs (use cases, agent, backends, root configs) as package data, and
the one place the settings' defaults live.

Hydra finds them as ``pkg://hmk8s.configs``; code that reads a YAML file directly takes its
path from `CONFIG_DIR`, so an installed wheel works the same as a source checkout.

The typed settings (``hmk8s.agents.config``, ``hmk8s.train.config``) are the schema: each of
their fields takes its default from these files through `default`, so a value is written in
one place, the YAML, and a setting built in Python is the setting a run gets from the command
line.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent
SEARCH_PATH = "pkg://hmk8s.configs"
#: The root config's own keys that are not settings of a run.
_NOT_SETTINGS = ("defaults", "hydra")


@functools.cache
def _shipped() -> dict[str, Any]:
    root = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"))
    agent = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "agent" / "dqn.yaml"))
    return {
        **{k: v for k, v in root.items() if k not in _NOT_SETTINGS},
        "agent": agent,
    }


def shipped() -> dict[str, Any]:
    """The root config's settings as shipped (``config.yaml`` with its default agent,
    ``agent/dqn.yaml``), as a plain dict: what a run gets for a key nobody set. The use case
    and backend groups are not in it: they have no default values, only default choices."""
    return copy.deepcopy(_shipped())


def shipped_value(key: str) -> Any:
    """The shipped value of a dotted setting, e.g. ``agent.hidden`` or ``env.encoder``."""
    node: Any = _shipped()
    for part in key.split("."):
        node = node[part]
    return copy.deepcopy(node)


def default(key: str, schema: type | None = None) -> Any:
    """A dataclass field whose default is the shipped value of ``key`` (built into the
    dataclass ``schema`` when the setting is a block of settings)."""

    def make() -> Any:
        value = shipped_value(key)
        return schema(**value) if schema is not None else value

    return dataclasses.field(default_factory=make)
