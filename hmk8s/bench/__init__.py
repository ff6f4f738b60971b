"""Benchmarks as library code: simulator, training and actor/learner throughput.

The scripts in `scripts/` only parse arguments and print.
"""
