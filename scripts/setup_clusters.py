"""Set clusters up for a `backend=k8s` run (namespaces, ServiceAccounts, Roles, proxies), or tear

    python scripts/setup_clusters.py --num-envs 4 --write-kubeconfig run.kubeconfig

The program and its options: `hmk8s.k8s.setup_cli`.
"""

import sys

from hmk8s.k8s.setup_cli import main

if __name__ == "__main__":
    sys.exit(main())
