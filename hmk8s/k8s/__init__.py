"""The Kubernetes backend: the simulator's environments, acted out on real clusters.

Nothing here is imported by the training core; `kubernetes` (and `kmock`, for the emulator) are
imported lazily inside this package only.
"""
