"""Run a trained agent as a controller: ``python scripts/control.py agent=<run or export>
backend=k8s|sim [dry_run=true] [guard.max_changes=4] ...`` (see docs/operations.md)."""

from __future__ import annotations

import sys

from hmk8s.control.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
