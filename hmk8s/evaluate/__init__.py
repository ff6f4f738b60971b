"""Evaluation of trained agents against the baselines: statistics, learning speed, plots, report."""
