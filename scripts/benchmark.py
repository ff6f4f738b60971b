"""Training throughput: the Anakin trainer at several ``num_envs`` against a host-loop DQN.

    python scripts/benchmark.py --env cartpole --num-envs 1,16,256,1024,4096

The program and its options: `hmk8s.bench.training_cli`.
"""

from hmk8s.bench.training_cli import main

if __name__ == "__main__":
    main()
