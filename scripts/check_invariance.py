"""Check that a change moved code without changing behaviour.

    python scripts/check_invariance.py record tests/data/invariance.json   # before the change

The program and its options: `hmk8s.bench.invariance_cli`.
"""

import sys

from hmk8s.bench.invariance_cli import main

if __name__ == "__main__":
    sys.exit(main())
