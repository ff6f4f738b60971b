"""Run one replica of the hmk8s operator for a ChainController: ``python scripts/chain_operator.py
name=<ChainController> namespace=<its namespace> [kubeconfig=…] [context=…]`` (see
docs/operations.md, "The operator"); in the cluster the image runs it as ``hmk8s-operator``."""

from __future__ import annotations

import sys

from hmk8s.control.operator import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
