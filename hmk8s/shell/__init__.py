"""The command-line shell every program of hmk8s shares (train, evaluate, control, export,
the benchmarks): how a failure ends (`exit`), how a run directory is named and guarded
(`run_dir`), and how the shipped Hydra configs are composed (`compose`).

It sits low in the import layers so that every program can use it, and imports neither JAX
nor the Kubernetes client: the training core stays importable without them.
"""
