"""hmk8s: deep Q-learning (DQN and heuristically accelerated HAQL) for network-function chains."""
