"""Sim to real on the local node: a trained agent, the rulebook and Kubernetes' HPA controller on
the same load, each beside the simulator's prediction. See `hmk8s.control.sim_to_real` and
docs/sim-to-real.md.
"""

from hmk8s.control.sim_to_real import entry

if __name__ == "__main__":
    entry()
