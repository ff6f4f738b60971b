"""Training: the Anakin loop, checkpoints, run logs, and the env interface they share."""
