"""hmk8s: deep Q-learning (DQN and heuristically accelerated HAQL) for network-function chains.

Importing the package registers the gymnasium ids hmk8s/EHR-v0, hmk8s/ML-v0, hmk8s/STREAM-v0.
`hmk8s.load_agent` (a trained run's agent, see `hmk8s.control.agent`) is imported on first use.
"""

from typing import Any

from hmk8s.envs import register_envs

register_envs()


def __getattr__(name: str) -> Any:
    if name == "load_agent":
        from hmk8s.control.agent import load_agent

        return load_agent
    raise AttributeError(f"module 'hmk8s' has no attribute {name!r}")
