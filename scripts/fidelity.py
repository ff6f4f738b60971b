"""Sim fidelity on the local node: record episodes, then compare and calibrate the simulator.
See `hmk8s.k8s.local.fidelity_cli` and docs/sim-to-real.md.
"""

from hmk8s.k8s.local.fidelity_cli import entry

if __name__ == "__main__":
    entry()
