"""Train DQN and HAQL over seeds and compare them with the baselines:
``python scripts/evaluate.py usecase=ml seeds=10`` (``usecase=all``: the three use cases), or
evaluate the runs of a training sweep instead of training: ``runs_from=<sweep dir>``.

Hydra composes the shipped ``hmk8s/configs/evaluate.yaml`` (the training config plus an
``evaluate`` block) with the overrides given; the same program is installed as
``hmk8s-evaluate``. See `hmk8s.evaluate.cli`.
"""

from hmk8s.evaluate.cli import entry

if __name__ == "__main__":
    entry()
