"""Benchmarks as library code: simulator, training and actor/learner throughput (the scripts in `scripts/` only parse arguments and print)."""
