"""The shipped Hydra configs (use cases, agent, backends, root configs) as package data.

Hydra finds them as ``pkg://hmk8s.configs``; code that reads a YAML file directly takes its
path from `CONFIG_DIR`, so an installed wheel works the same as a source checkout.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
SEARCH_PATH = "pkg://hmk8s.configs"
