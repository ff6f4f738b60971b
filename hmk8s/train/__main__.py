"""``python -m hmk8s.train``: `scripts/train.py` (``hmk8s-train``)."""

from hmk8s.train.cli import entry

entry()
