"""Delete leftovers of hmk8s runs from the clusters of a cluster map, by label.

    python scripts/cleanup.py --run-id run-1a2b3c4d      # one run's objects

The program and its options: `hmk8s.k8s.cleanup_cli`.
"""

import sys

from hmk8s.k8s.cleanup_cli import main

if __name__ == "__main__":
    sys.exit(main())
