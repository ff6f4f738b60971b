"""``python -m hmk8s.evaluate``: `scripts/evaluate.py` (``hmk8s-evaluate``)."""

from hmk8s.evaluate.cli import entry

entry()
