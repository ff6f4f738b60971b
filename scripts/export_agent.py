"""Export a run's trained agent as a small self-contained policy:
``python scripts/export_agent.py run=runs/<run> out=agent/ [step=<step>] [seed=<seed>]``."""

from __future__ import annotations

import sys

from hmk8s.control.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main(sys.argv[1:]))
