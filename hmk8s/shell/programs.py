"""hmk8s's programs as child processes, for the benchmarks and checks that time or compare
whole commands: the same program as ``scripts/<name>.py``, found wherever hmk8s is imported
from (a checkout or an installed wheel)."""

from __future__ import annotations

import sys

#: ``scripts/<name>.py`` -> the module ``python -m`` runs.
MODULES = {"train": "hmk8s.train", "evaluate": "hmk8s.evaluate"}


def program(name: str, *args: str) -> list[str]:
    """The command line of ``scripts/<name>.py args...`` (``train`` or ``evaluate``)."""
    return [sys.executable, "-m", MODULES[name], *args]
