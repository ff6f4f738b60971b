"""Train DQN or HAQL on a use case: ``python scripts/train.py usecase=ml heuristic=true``.

Hydra composes the shipped ``hmk8s/configs/config.yaml`` with the overrides given; the same
program is installed as ``hmk8s-train``. See `hmk8s.train.cli`.
"""

from hmk8s.train.cli import entry

if __name__ == "__main__":
    entry()
