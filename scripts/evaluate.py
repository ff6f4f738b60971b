"""Train DQN and HAQL over seeds and compare them with the baselines:
``python scripts/evaluate.py usecase=ml seeds=10`` (``usecase=all``: the three use cases).

Hydra composes ``configs/evaluate.yaml`` (the training config plus an ``evaluate`` block) with
the overrides given; see `hmk8s.evaluate.cli`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hmk8s.evaluate import cli

cli.register_schema()


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    cli.main(cfg)


if __name__ == "__main__":
    main()
