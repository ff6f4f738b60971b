"""Policies that act on the structured observation: the rulebook, the baselines, the greedy
Q-network policy, and the rollout that scores any of them on identical episodes."""
