"""Benchmark of the asynchronous actor / learner against emulated Kubernetes clusters.

    python scripts/bench_async.py --num-envs 1,2,4,8,16 --api-latency 0.2 --step-seconds 1

The program and its options: `hmk8s.bench.async_cli`.
"""

from hmk8s.bench.async_cli import main

if __name__ == "__main__":
    main()
