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


def _settings(name: str) -> dict[str, Any]:
    data = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / name))
    return {k: v for k, v in data.items() if k not in _NOT_SETTINGS}


@functools.cache
def _shipped(root: str) -> dict[str, Any]:
    if root == "config":
        return {**_settings("config.yaml"), "agent": _settings("agent/dqn.yaml")}
    return _settings(f"{root}.yaml")


def shipped(root: str = "config") -> dict[str, Any]:
    """The settings of a root config as shipped, as a plain dict: what a run gets for a key
    nobody set. ``config`` is ``config.yaml`` with its default agent (``agent/dqn.yaml``); the
    use case and backend groups are not in it: they have default choices, not values.
    ``evaluate`` is ``evaluate.yaml``'s own keys (its ``evaluate`` block and the training
    keys it changes)."""
    return copy.deepcopy(_shipped(root))


def shipped_value(key: str, root: str = "config") -> Any:
    """The shipped value of a dotted setting, e.g. ``agent.hidden`` or ``env.encoder``."""
    node: Any = _shipped(root)
    for part in key.split("."):
        node = node[part]
    return copy.deepcopy(node)


def default(key: str, schema: type | None = None, root: str = "config") -> Any:
    """A dataclass field whose default is the shipped value of ``key`` in ``root`` (built into
    the dataclass ``schema`` when the setting is a block of settings)."""

    def make() -> Any:
        value = shipped_value(key, root)
        return schema(**value) if schema is not None else value

    return dataclasses.field(default_factory=make)
