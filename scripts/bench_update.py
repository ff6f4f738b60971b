"""Cost of one DQN update on the default device against the host CPU, in the same command.

    python scripts/bench_update.py --env ml --hidden 120-84,256-256 --batch-size 128,1024,8192

The program and its options: `hmk8s.bench.update_cli`.
"""

from hmk8s.bench.update_cli import main

if __name__ == "__main__":
    main()
