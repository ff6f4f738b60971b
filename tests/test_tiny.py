"""The tests' tiny run is one run: the overrides the process-level tests pass to
`scripts/train.py` compose to the config the in-process tests build."""

from __future__ import annotations

import pytest
from in_process import composed
from omegaconf import OmegaConf
from tiny import tiny_config, tiny_overrides

from hmk8s.train.config import TrainConfig


@pytest.mark.parametrize(
    ("overrides", "changes"),
    [
        ((), {}),
        (
            ("total_steps=512", "eval.enabled=true", "agent.hidden=[32,32]", "heuristic=true"),
            {
                "total_steps": 512,
                "eval": {"enabled": True},
                "agent": {"hidden": [32, 32]},
                "heuristic": True,
            },
        ),
    ],
    ids=["tiny", "changed"],
)
def test_the_command_line_composes_the_in_process_config(overrides, changes):
    with composed(*tiny_overrides(*overrides)) as cfg:
        from_cli: TrainConfig = OmegaConf.to_object(cfg)
    assert from_cli == tiny_config(usecase=from_cli.usecase, backend=from_cli.backend, **changes)


def test_a_change_replaces_the_tiny_setting_it_names():
    narrow = tiny_overrides("+usecase.trace=[]", "chunk_steps=64", narrow=True)
    assert narrow == [
        "total_steps=256",
        "num_envs=8",
        "agent.hidden=[8]",
        "agent.batch_size=8",
        "agent.buffer_size=256",
        "agent.learning_starts=32",
        "log.progress=false",
        "log.tensorboard=false",
        "eval.enabled=false",
        "+usecase.trace=[]",
        "chunk_steps=64",
    ]
