"""hmk8s: deep Q-learning (DQN and heuristically accelerated HAQL) for network-function chains.

Importing the package registers the gymnasium ids hmk8s/EHR-v0, hmk8s/ML-v0, hmk8s/STREAM-v0.
"""

from hmk8s.envs import register_envs

register_envs()
