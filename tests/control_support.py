"""What the controller's tests share: ML's settings for the controlled clusters, agents built by
hand so their choices are known, a backend the twin steps, and the ways the tests read and hand
over what is on the clusters.

`rulebook` has Q = 0 and the rulebook's bonus, so it acts as
`hmk8s.policies.heuristics.recommend`; `rogue_agent` always proposes one given action when the
mask allows it (else the no-op).
"""

from __future__ import annotations

import base64
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from kubernetes import client as k8s
from served import Stored

from hmk8s import sim
from hmk8s.agents.network import QNetwork
from hmk8s.control.agent import Agent, Manifest, export_agent
from hmk8s.control.cluster import ClusterBackend
from hmk8s.domain.encoders import onehot_size
from hmk8s.domain.usecases import CONFIG_DIR, load_usecase
from hmk8s.k8s.client import ClusterClient
from hmk8s.k8s.config import ClusterMap
from hmk8s.k8s.emulated.twin import TwinClock
from hmk8s.train.runlog import params_sha256

ENV = {"encoder": "onehot", "noop": True, "start": "minimal", "episode_steps": 120}
# quick retries; the emulator's injected timeouts hold a call for 0.15 s
API = {
    "emulator": {
        "timeout_s": 0.1,
        "backoff_base_s": 0.005,
        "backoff_max_s": 0.05,
        "max_attempts": 8,
    },
    "apiserver": {"timeout_s": 5.0, "backoff_base_s": 0.05, "backoff_max_s": 0.5},
}
ENCRYPT, MEDIUM = 0, 1


def crafted_agent(q: np.ndarray, bonus: float) -> Agent:
    """An ML agent whose Q-values are ``q`` whatever it observes."""
    mapping = yaml.safe_load((CONFIG_DIR / "ml.yaml").read_text())
    _, params = sim.make(load_usecase(mapping), ENV)
    net = QNetwork(hidden=(4,), num_actions=params.layout.num_actions)
    obs_dim = onehot_size(params.layout.clusters, params.layout.functions)
    weights = net.init(jax.random.PRNGKey(0), jnp.zeros((obs_dim,)))
    weights = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), weights)
    weights["params"]["Dense_1"]["bias"] = np.asarray(q, np.float32)
    manifest = Manifest(
        usecase="ml",
        usecase_config=mapping,
        env=ENV,
        hidden=[4],
        num_actions=params.layout.num_actions,
        obs_dim=obs_dim,
        bonus=bonus,
        source_run="crafted",
        step=0,
        seed=0,
        params_sha256=params_sha256(weights),
    )
    return Agent(manifest, weights)


def rulebook() -> Agent:
    """An ML agent with Q = 0 and the rulebook's bonus: it acts as `recommend`."""
    return crafted_agent(np.zeros(244), bonus=1.0)


def rogue_agent(action: int) -> Agent:
    q = np.zeros(244)
    q[action], q[-1] = 10.0, 5.0  # the action if allowed, else the no-op
    return crafted_agent(q, bonus=0.0)


def stepped_backend(
    agent: Agent, cmap: ClusterMap, clients: list[ClusterClient], clock: TwinClock, **options
) -> ClusterBackend:
    """A controller's backend on ``cmap`` whose cluster time the twin's ``clock`` moves: a step
    waits for no wall-clock period."""
    return ClusterBackend(
        agent.env_params,
        agent.usecase,
        cmap,
        clients,
        clock=clock,
        step_seconds=0,
        **options,
    )


class Steps(list):
    """A sink that keeps every (decision, outcome, reading after)."""

    def record(self, decision, outcome, after) -> None:
        self.append((decision, outcome, after))


def desired(objects: dict[tuple[str, str, str], Stored]) -> dict[tuple[str, str, str], Stored]:
    return {key: o.desired() for key, o in objects.items()}


def cluster_map_file(cmap: ClusterMap, folder: Path) -> Path:
    """``cmap`` as the `cluster_map=` file `scripts/control.py` reads."""
    path = folder / "clusters.yaml"
    path.write_text(yaml.safe_dump(cmap.model_dump(mode="json")))
    return path


def agent_configmap(core: k8s.CoreV1Api, namespace: str, agent: Agent, tmp_path: Path) -> str:
    """The exported agent as ConfigMap `agent` (what the docs' `kubectl create configmap` makes);
    its parameters' digest."""
    folder = export_agent(agent, tmp_path / "agent")
    blob = base64.b64encode((folder / "params.msgpack").read_bytes()).decode()
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {"name": "agent"},
            "data": {"agent.json": (folder / "agent.json").read_text()},
            "binaryData": {"params.msgpack": blob},
        },
    )
    return agent.manifest.params_sha256
