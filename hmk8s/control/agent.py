"""A trained agent outside the trainer: loaded from a run's checkpoint or from an export.

An `Agent` holds the Q-network parameters and what it needs to act on the domain's
`Observation`: the use case it was trained on, its encoder and the rulebook's weight in its
greedy policy (``argmax_a [Q(s, a) + bonus H(s, a)]`` over the actions the mask allows, the
policy `hmk8s.policies.q_policy.q_policy` evaluates). Loading never reads the replay buffer.

An export is a folder with ``agent.json`` (the manifest: use case, encoder, network shape,
bonus, source run, step, ``params_sha256``) and ``params.msgpack`` (the parameters): all a
controller host needs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from omegaconf import OmegaConf

from hmk8s import sim
from hmk8s.agents.config import HaqlConfig, deployed_bonus
from hmk8s.agents.network import QNetwork
from hmk8s.encoders import get_encoder
from hmk8s.observation import Observation
from hmk8s.policies.baselines import Policy
from hmk8s.policies.heuristics import recommend
from hmk8s.policies.q_policy import q_policy
from hmk8s.sim.params import EnvParams
from hmk8s.spaces import OP_NAMES, ActionLayout
from hmk8s.train.checkpoint import CheckpointError, load_params
from hmk8s.train.runlog import params_sha256
from hmk8s.usecases import CONFIG_NAMES, FUNCTION_NAMES, UseCase, UseCaseError, load_usecase

MANIFEST = "agent.json"
PARAMS = "params.msgpack"
FORMAT = "hmk8s-agent"
FORMAT_VERSION = 1


class AgentError(ValueError):
    """An agent that cannot be loaded or does not fit: the message says which and why."""


@dataclass(frozen=True)
class Manifest:
    """What an agent is, beside its parameters; the JSON of an export."""

    usecase: str
    usecase_config: dict[str, Any]
    env: dict[str, Any]
    hidden: list[int]
    num_actions: int
    obs_dim: int
    bonus: float
    source_run: str
    step: int
    seed: int
    params_sha256: str
    layer_norm: bool = False
    format: str = FORMAT
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Choice:
    """One action as the agent scores it: Q, Q plus the rulebook's bonus, and in words."""

    action: int
    q: float
    score: float
    text: str


@dataclass(frozen=True)
class Explanation:
    """Why the agent chose what it chose."""

    action: int
    top: list[Choice]
    hint: int
    hint_text: str
    bonus: float
    allowed: int
    hint_allowed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Agent:
    """A greedy Q-network policy over one use case's observations."""

    manifest: Manifest
    q_params: Any = field(repr=False)

    @cached_property
    def usecase(self) -> UseCase:
        return load_usecase(self.manifest.usecase_config, source=f"agent {self.manifest.usecase}")

    @cached_property
    def env_params(self) -> EnvParams:
        return sim.make(self.usecase, self.manifest.env)[1]

    @property
    def layout(self) -> ActionLayout:
        return self.env_params.layout

    @cached_property
    def network(self) -> QNetwork:
        m = self.manifest
        return QNetwork(tuple(m.hidden), m.num_actions, m.layer_norm)

    def policy(self) -> Policy:
        """The agent as a baseline-style `Policy` (what `evaluate_policy` runs)."""
        m = self.manifest
        return q_policy(self.network.apply, self.q_params, m.env["encoder"], m.bonus)

    @cached_property
    def _scores(self) -> Any:
        """One compiled call: the policy's own action, Q(s, .) and the rulebook's hint."""
        policy = self.policy()
        params = self.env_params
        encode = get_encoder(self.manifest.env["encoder"])

        def scores(obs: Observation):
            action, _ = policy.act(jax.random.PRNGKey(0), jnp.zeros((), jnp.int32), obs, params)
            q = self.network.apply(self.q_params, encode(obs, params))
            return action, q, recommend(obs, params)

        return jax.jit(scores)

    def act(self, obs: Observation) -> int:
        """The greedy action for one structured observation."""
        action, _, _ = self._scores(obs)
        return int(action)

    def explain(self, obs: Observation, top: int = 3) -> Explanation:
        """The chosen action, the ``top`` best allowed actions with their Q-values, the
        rulebook's hint, the bonus it gets and how many actions the mask allows."""
        action, q, hint = jax.device_get(self._scores(obs))
        q = np.asarray(q, np.float64)
        mask = np.asarray(obs.action_mask, bool)
        bonus = self.manifest.bonus
        score = q + bonus * (np.arange(q.shape[0]) == int(hint))
        order = [a for a in np.argsort(-score, kind="stable") if mask[a]][:top]
        choices = [
            Choice(int(a), float(q[a]), float(score[a]), action_text(self.layout, int(a)))
            for a in order
        ]
        return Explanation(
            action=int(action),
            top=choices,
            hint=int(hint),
            hint_text=action_text(self.layout, int(hint)),
            bonus=float(bonus),
            allowed=int(mask.sum()),
            hint_allowed=bool(mask[int(hint)]) if int(hint) >= 0 else False,
        )


def action_text(layout: ActionLayout, action: int) -> str:
    """An action in words: ``deploy encrypt/medium on cluster 1 for proxy 2``."""
    if action < 0 or action == layout.noop_index:
        return "no-op"
    a = jax.device_get(layout.decode(action))
    op = OP_NAMES[int(a.op)]
    inst = f"{FUNCTION_NAMES[int(a.function)]}/{CONFIG_NAMES[int(a.config)]}"
    where = f"on cluster {int(a.cluster)}"
    if op == "remove":
        return f"remove one pod of {inst} {where}"
    if op == "assign":
        return f"route proxy {int(a.proxy)}'s hop to {inst} {where}"
    return f"deploy {inst} {where} for proxy {int(a.proxy)}"


# -- loading ---------------------------------------------------------------------------------


def load_agent(
    source: str | Path,
    step: int | None = None,
    *,
    seed: int = 0,
    usecase: str | Path | Mapping[str, Any] | None = None,
) -> Agent:
    """The agent of a training run (its checkpoint at ``step``, the latest by default; seed
    ``seed`` of a multi-seed run) or of an export folder. With ``usecase`` (a name, YAML path or
    mapping), refuse an agent trained for another use case or another action/observation shape.
    """
    path = Path(source)
    if (path / MANIFEST).is_file():
        if step is not None:
            raise AgentError(f"{path} is an export of one step; step={step} applies to runs")
        agent = _load_export(path)
    elif (path / "checkpoints").is_dir():
        agent = _load_run(path, step, seed)
    elif path.exists():
        raise AgentError(f"{path}: neither a training run (no checkpoints/) nor an agent export")
    else:
        raise AgentError(f"{path}: no such run or agent export")
    if usecase is not None:
        check_usecase(agent, usecase)
    return agent


def check_usecase(agent: Agent, usecase: str | Path | Mapping[str, Any] | UseCase) -> None:
    """Refuse an agent whose use case, actions or inputs differ from ``usecase``'s."""
    try:
        uc = usecase if isinstance(usecase, UseCase) else load_usecase(usecase)
    except UseCaseError as err:
        raise AgentError(str(err)) from None
    m = agent.manifest
    if uc.name != m.usecase:
        raise AgentError(f"the agent was trained for use case {m.usecase!r}, not {uc.name!r}")
    _, params = sim.make(uc, m.env)
    dim = _obs_dim(params, m.env["encoder"])
    if (params.layout.num_actions, dim) != (m.num_actions, m.obs_dim):
        raise AgentError(
            f"use case {uc.name!r} has {params.layout.num_actions} actions and {dim} inputs; "
            f"the agent has {m.num_actions} and {m.obs_dim}"
        )


def _obs_dim(params: EnvParams, encoder: str) -> int:
    encode = get_encoder(encoder)
    env = sim.ClusterEnv()
    shape = jax.eval_shape(lambda k: encode(env.reset(k, params)[0], params), jax.random.PRNGKey(0))
    return int(shape.shape[0])


def _template(hidden: list[int], num_actions: int, obs_dim: int, layer_norm: bool) -> Any:
    net = QNetwork(tuple(hidden), num_actions, layer_norm)
    return jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((obs_dim,), jnp.float32))


def _check_shapes(params: Any, template: Any, where: str) -> None:
    got = jax.tree.map(lambda x: tuple(np.shape(x)), params)
    want = jax.tree.map(lambda x: tuple(x.shape), template)
    if got != want:
        raise AgentError(f"{where}: parameters do not fit the manifest's network ({got} vs {want})")


def _load_run(run_dir: Path, step: int | None, seed: int) -> Agent:
    try:
        step, config, params = load_params(run_dir, step)
    except CheckpointError as err:
        raise AgentError(str(err)) from None
    where = f"{run_dir} step {step}"
    try:
        usecase_config = dict(config["usecase"])
        env_cfg = dict(config["env"])
        hidden = list(config["agent"]["hidden"])
        layer_norm = bool(config["agent"].get("layer_norm", False))
        haql = _haql(config) if config.get("heuristic") else None
    except (KeyError, TypeError) as err:
        raise AgentError(f"{where}: not an hmk8s use-case run (config lacks {err})") from None
    try:
        usecase = load_usecase(usecase_config, source=f"{where} config")
        _, env_params = sim.make(usecase, env_cfg)
    except (UseCaseError, ValueError) as err:
        raise AgentError(str(err)) from None
    obs_dim = _obs_dim(env_params, env_cfg["encoder"])
    num_actions = env_params.layout.num_actions
    template = _template(hidden, num_actions, obs_dim, layer_norm)
    params = _one_seed(params, template, seed, where)
    manifest = Manifest(
        usecase=usecase.name,
        usecase_config=_plain(usecase_config),
        env=_plain(env_cfg),
        hidden=hidden,
        num_actions=num_actions,
        obs_dim=obs_dim,
        bonus=float(deployed_bonus(haql)),
        source_run=str(run_dir.resolve()),
        step=int(step),
        seed=seed,
        params_sha256=params_sha256(params),
        layer_norm=layer_norm,
    )
    return Agent(manifest, params)


def _one_seed(params: Any, template: Any, seed: int, where: str) -> Any:
    """Seed ``seed`` of seed-stacked parameters (the sim trainer's); unstacked ones as they are."""
    shapes = [np.shape(x) for x in jax.tree.leaves(params)]
    want = [tuple(w.shape) for w in jax.tree.leaves(template)]
    stacked = len(shapes) == len(want) and all(
        len(s) == len(w) + 1 and s[1:] == w and s[0] == shapes[0][0]
        for s, w in zip(shapes, want, strict=True)
    )
    if stacked:
        seeds = shapes[0][0]
        if not 0 <= seed < seeds:
            raise AgentError(f"{where}: seed={seed}, the run has seeds 0..{seeds - 1}")
        params = jax.tree.map(lambda x: x[seed], params)
    elif seed != 0:
        raise AgentError(f"{where}: the run has one seed; seed={seed} does not exist")
    params = jax.tree.map(np.asarray, params)
    _check_shapes(params, template, where)
    return params


def _haql(config: Mapping[str, Any]) -> HaqlConfig:
    node = OmegaConf.merge(OmegaConf.structured(HaqlConfig), config.get("haql") or {})
    return OmegaConf.to_object(node)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy (tuples become lists, as JSON would make them)."""
    return json.loads(json.dumps(mapping))


# -- export ----------------------------------------------------------------------------------


def export_agent(agent: Agent, out: str | Path) -> Path:
    """Write ``agent`` to the folder ``out`` (created; existing export files are replaced)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    blob = serialization.msgpack_serialize(jax.tree.map(np.asarray, agent.q_params))
    (folder / PARAMS).write_bytes(blob)
    (folder / MANIFEST).write_text(json.dumps(asdict(agent.manifest), indent=2) + "\n")
    return folder


def _load_export(folder: Path) -> Agent:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise AgentError(f"{folder / MANIFEST}: unreadable manifest ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AgentError(f"{folder / MANIFEST}: not an hmk8s agent manifest")
    if data.get("version") != FORMAT_VERSION:
        raise AgentError(
            f"{folder / MANIFEST}: format version {data.get('version')}, "
            f"this reads {FORMAT_VERSION}"
        )
    try:
        manifest = Manifest(**data)
    except TypeError as err:
        raise AgentError(f"{folder / MANIFEST}: {err}") from None
    try:
        params = serialization.msgpack_restore((folder / PARAMS).read_bytes())
    except OSError as err:
        raise AgentError(f"{folder / PARAMS}: cannot read ({err.strerror})") from None
    except Exception as err:
        raise AgentError(f"{folder / PARAMS}: not a parameter file ({err})") from None
    template = _template(
        manifest.hidden, manifest.num_actions, manifest.obs_dim, manifest.layer_norm
    )
    _check_shapes(params, template, str(folder / PARAMS))
    digest = params_sha256(params)
    if digest != manifest.params_sha256:
        raise AgentError(
            f"{folder}: parameters digest {digest[:16]}… differs from the manifest's "
            f"{manifest.params_sha256[:16]}… (corrupt or mixed export)"
        )
    agent = Agent(manifest, params)
    try:
        check_usecase(agent, manifest.usecase_config)
    except AgentError as err:
        raise AgentError(f"{folder / MANIFEST}: {err}") from None
    return agent
