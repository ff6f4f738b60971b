"""Q-network, DQN / HAQL update and on-device replay."""
