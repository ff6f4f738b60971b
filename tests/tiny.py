"""The tiny training runs of the tests, in one place: the command line's overrides
(`tiny_overrides`) and the in-process config (`tiny_config`) come from the same settings, so the
runs that start `scripts/train.py` and the ones that call the trainer do not drift apart.

A family's variation is an argument: `narrow=True` for the half-width run that process-level
tests start many times, and changes that replace single settings.
"""

from __future__ import annotations

import json
from typing import Any

from omegaconf import OmegaConf

from hmk8s.train.config import TrainConfig

#: A run of seconds that still learns: 16 envs, one 16-unit layer, updates from step 64, one
#: chunk (and checkpoint) per 256 env steps; no progress bar, TensorBoard or evaluation.
TINY: dict[str, Any] = {
    "total_steps": 256,
    "num_envs": 16,
    "chunk_steps": 256,
    "agent": {"hidden": [16], "batch_size": 16, "buffer_size": 1024, "learning_starts": 64},
    "log": {"progress": False, "tensorboard": False},
    "eval": {"enabled": False},
}
#: Half the width, and two chunks (checkpoints) in 256 env steps: it compiles faster still.
NARROW: dict[str, Any] = {
    "num_envs": 8,
    "chunk_steps": 128,
    "agent": {"hidden": [8], "batch_size": 8, "buffer_size": 256, "learning_starts": 32},
}


def tiny_settings(narrow: bool = False) -> dict[str, Any]:
    """The tiny run's settings as nested plain values (`NARROW` merged in if ``narrow``)."""
    merged = OmegaConf.merge(TINY, NARROW if narrow else {})
    return OmegaConf.to_container(merged)


def tiny_overrides(*overrides: str, narrow: bool = False) -> list[str]:
    """``scripts/train.py``'s overrides for the tiny run, then ``overrides``: one that sets a key
    of the tiny run replaces it (``"total_steps=512"``, ``"+key=..."`` alike)."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    own = [f"{key}={json.dumps(value)}" for key, value in _flat(tiny_settings(narrow)).items()]
    return [*(o for o in own if o.split("=", 1)[0] not in given), *overrides]


def tiny_config(**changes: Any) -> TrainConfig:
    """The tiny run as a `TrainConfig`, with ``changes`` merged in: plain values or nested
    mappings (``eval={"episodes": 32}`` changes one setting of the block), or a config object
    (``agent=AgentConfig(...)`` replaces the tiny agent whole)."""
    schema = OmegaConf.structured(TrainConfig)
    return OmegaConf.to_object(OmegaConf.merge(schema, tiny_settings(), changes))


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
