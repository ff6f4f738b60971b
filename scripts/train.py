"""Train DQN or HAQL on a use case: ``python scripts/train.py usecase=ml heuristic=true``.

Hydra composes ``configs/config.yaml`` with the overrides given; see `hmk8s.train.cli`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hmk8s.train import cli

cli.register_schema()


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    cli.main(cfg)


if __name__ == "__main__":
    main()
