"""Simulator throughput: vmapped JAX envs vs the gymnasium env stepped from Python.

    python scripts/bench_sim.py --usecase ml --num-envs 1,64,1024,16384

The program and its options: `hmk8s.bench.sim_cli`.
"""

from hmk8s.bench.sim_cli import main

if __name__ == "__main__":
    main()
