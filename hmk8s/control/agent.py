"""A trained agent outside the trainer: loaded from a run's checkpoint or from an export.

An `Agent` holds the Q-network parameters and what it needs to act on the domain's
`Observation`: the use case it was trained on, its encoder and the rulebook's weight in its
greedy policy (``argmax_a [Q(s, a) + bonus H(s, a)]`` over the actions the mask allows, the
policy `hmk8s.policies.q_policy.q_policy` evaluates). Loading never reads the replay buffer.

An export is a folder with ``agent.json`` (the manifest: use case, encoder, network shape,
bonus, source run, step, ``params_sha256``) and ``params.msgpack`` (the parameters): all a
controller host needs. A use case's trace travels inside the manifest as rows.

An export is data from elsewhere, so loading one checks it rather than trusting it: both files
must be regular files (no symlinks, FIFOs or devices) no larger than the manifest's network
needs; every manifest field must have its type and range; the weights must be finite float32
arrays of the network's shapes; the manifest may name no file (a trace given as a path is
refused). The digest proves integrity only; ``agent.sig`` beside the manifest, an HMAC-SHA256
or Ed25519 signature of the manifest's bytes (which hold the digest), proves origin when the
loader is given the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization as keys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flax import serialization
from omegaconf import OmegaConf
from pydantic import ConfigDict, Field, FiniteFloat, StringConstraints, ValidationError
from pydantic.dataclasses import dataclass as checked_dataclass

from hmk8s.agents.config import HaqlConfig, deployed_bonus, learner_haql
from hmk8s.agents.network import QNetwork
from hmk8s.domain.encoders import get_encoder
from hmk8s.domain.observation import Observation
from hmk8s.domain.params import EnvParams
from hmk8s.domain.placement import start_state
from hmk8s.domain.settings import EnvConfigError, params_from_usecase
from hmk8s.domain.spaces import OP_NAMES, ActionLayout
from hmk8s.domain.state import observe
from hmk8s.domain.usecases import (
    CONFIG_NAMES,
    FUNCTION_NAMES,
    UseCase,
    UseCaseError,
    load_usecase,
    validation_problems,
)
from hmk8s.policies.baselines import Policy
from hmk8s.policies.heuristics import recommend
from hmk8s.policies.q_policy import q_policy
from hmk8s.train.checkpoint import CheckpointError, load_params
from hmk8s.train.runlog import params_sha256

MANIFEST = "agent.json"
PARAMS = "params.msgpack"
FORMAT = "hmk8s-agent"
FORMAT_VERSION = 1
SIGNATURE = "agent.sig"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest with an inline trace of a few hundred thousand rows
MAX_PARAMS_BYTES = 1 << 30
MIN_HMAC_KEY_BYTES = 32
#: What msgpack adds to the arrays' bytes (keys, headers), at most.
PARAMS_OVERHEAD_BYTES = 64 << 10

Count = Annotated[int, Field(ge=1, le=1 << 20)]


class AgentError(ValueError):
    """An agent that cannot be loaded or does not fit: the message says which and why."""


@checked_dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid"))
class Manifest:
    """What an agent is, beside its parameters; the JSON of an export. Every field is checked
    for its type and range when one is made (pydantic, strict: no coercion)."""

    usecase: str
    usecase_config: dict[str, Any]
    env: dict[str, Any]
    hidden: list[Count]
    num_actions: Count
    obs_dim: Count
    bonus: FiniteFloat
    source_run: str
    step: Annotated[int, Field(ge=0)]
    seed: Annotated[int, Field(ge=0)]
    params_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
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
        return params_from_usecase(self.usecase, self.manifest.env)

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
    key: str | Path | None = None,
) -> Agent:
    """The agent of a training run (its checkpoint at ``step``, the latest by default; seed
    ``seed`` of a multi-seed run) or of an export folder. With ``usecase`` (a name, YAML path or
    mapping), refuse an agent trained for another use case or another action/observation shape.
    With ``key`` (a key file, `read_key`), refuse an export its holder did not sign.
    """
    path = Path(source)
    if os.path.lexists(path / MANIFEST):
        if step is not None:
            raise AgentError(f"{path} is an export of one step; step={step} applies to runs")
        agent = _load_export(path, None if key is None else read_key(key, private=False))
    elif (path / "checkpoints").is_dir():
        if key is not None:
            raise AgentError(f"{path}: a training run is not signed; key= applies to exports")
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
    params = params_from_usecase(uc, m.env)
    dim = _obs_dim(params, m.env["encoder"])
    if (params.layout.num_actions, dim) != (m.num_actions, m.obs_dim):
        raise AgentError(
            f"use case {uc.name!r} has {params.layout.num_actions} actions and {dim} inputs; "
            f"the agent has {m.num_actions} and {m.obs_dim}"
        )


def _obs_dim(params: EnvParams, encoder: str) -> int:
    encode = get_encoder(encoder)
    shape = jax.eval_shape(
        lambda k: encode(observe(start_state(k, params), params), params), jax.random.PRNGKey(0)
    )
    return int(shape.shape[0])


def _template(hidden: list[int], num_actions: int, obs_dim: int, layer_norm: bool) -> Any:
    net = QNetwork(tuple(hidden), num_actions, layer_norm)
    return jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((obs_dim,), jnp.float32))


def _check_weights(params: Any, template: Any, where: str) -> None:
    """Refuse parameters that are not finite arrays of the network's shapes and dtype."""
    got = jax.tree.map(lambda x: (tuple(np.shape(x)), str(np.asarray(x).dtype)), params)
    want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), template)
    if got != want:
        raise AgentError(f"{where}: parameters do not fit the manifest's network ({got} vs {want})")
    if not all(np.isfinite(x).all() for x in jax.tree.leaves(params)):
        raise AgentError(f"{where}: parameters hold NaN or infinite weights")


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
        haql = learner_haql(bool(config.get("heuristic")), _haql(config))
    except (KeyError, TypeError) as err:
        raise AgentError(f"{where}: not an hmk8s use-case run (config lacks {err})") from None
    try:
        usecase = load_usecase(usecase_config, source=f"{where} config")
        env_params = params_from_usecase(usecase, env_cfg)
    except (UseCaseError, ValueError) as err:
        raise AgentError(str(err)) from None
    obs_dim = _obs_dim(env_params, env_cfg["encoder"])
    num_actions = env_params.layout.num_actions
    template = _template(hidden, num_actions, obs_dim, layer_norm)
    params = _one_seed(params, template, seed, where)
    if usecase.trace is not None:  # the rows, not the path: an export names no file
        usecase_config["trace"] = [list(row) for row in usecase.trace]
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
    _check_weights(params, template, where)
    return params


def _haql(config: Mapping[str, Any]) -> HaqlConfig:
    node = OmegaConf.merge(OmegaConf.structured(HaqlConfig), config.get("haql") or {})
    return OmegaConf.to_object(node)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy (tuples become lists, as JSON would make them)."""
    return json.loads(json.dumps(mapping))


# -- export ----------------------------------------------------------------------------------


def export_agent(agent: Agent, out: str | Path, sign_key: str | Path | None = None) -> Path:
    """Write ``agent`` to the folder ``out`` (created; existing export files are replaced),
    signed with the key in the file ``sign_key`` when given (`read_key`)."""
    key = None if sign_key is None else read_key(sign_key, private=True)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    blob = serialization.msgpack_serialize(jax.tree.map(np.asarray, agent.q_params))
    manifest = (json.dumps(asdict(agent.manifest), indent=2) + "\n").encode()
    (folder / PARAMS).write_bytes(blob)
    (folder / MANIFEST).write_bytes(manifest)
    (folder / SIGNATURE).unlink(missing_ok=True)
    if key is not None:
        (folder / SIGNATURE).write_text(json.dumps(_sign(key, manifest)) + "\n")
    return folder


Key = bytes | Ed25519PrivateKey | Ed25519PublicKey


def read_key(path: str | Path, *, private: bool) -> Key:
    """A signing key from a file: an Ed25519 key in PEM (the private key signs, the public one
    verifies) or, for HMAC-SHA256, any other content of at least 32 bytes (the same file signs
    and verifies). Bounded and regular, as export files are."""
    data = _read_regular(Path(path), 1 << 16, "key")
    if not data.lstrip().startswith(b"-----BEGIN"):
        secret = data.strip()
        if len(secret) < MIN_HMAC_KEY_BYTES:
            raise AgentError(f"{path}: an HMAC key needs at least {MIN_HMAC_KEY_BYTES} bytes")
        return secret
    try:
        if b"PRIVATE KEY" in data:
            key: Any = keys.load_pem_private_key(data, password=None)
            key = key if private else key.public_key()
        else:
            key = keys.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise AgentError(f"{path}: not a PEM key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        raise AgentError(f"{path}: only Ed25519 keys are accepted")
    if private and not isinstance(key, Ed25519PrivateKey):
        raise AgentError(f"{path}: signing needs the private key")
    return key


def _sign(key: Key, manifest: bytes) -> dict[str, str]:
    if isinstance(key, bytes):
        mac = hmac.new(key, manifest, hashlib.sha256).hexdigest()
        return {"scheme": "hmac-sha256", "signature": mac}
    assert isinstance(key, Ed25519PrivateKey)
    return {"scheme": "ed25519", "signature": key.sign(manifest).hex()}


def _verify(key: Key, manifest: bytes, folder: Path) -> None:
    """Refuse an export without a signature that ``key`` verifies over the manifest's bytes."""
    where = folder / SIGNATURE
    if not os.path.lexists(where):
        raise AgentError(f"{folder}: unsigned export; a key was given, so a signature is required")
    try:
        doc = json.loads(_read_regular(where, 1 << 12, "signature"))
        scheme, signature = doc["scheme"], bytes.fromhex(doc["signature"])
    except (ValueError, KeyError, TypeError) as err:
        raise AgentError(f"{where}: not a signature ({err})") from None
    if isinstance(key, bytes):
        good = scheme == "hmac-sha256" and hmac.compare_digest(
            hmac.new(key, manifest, hashlib.sha256).digest(), signature
        )
    else:
        public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        try:
            good = scheme == "ed25519" and public.verify(signature, manifest) is None
        except InvalidSignature:
            good = False
    if not good:
        raise AgentError(f"{where}: the signature does not verify with the key given")


def _read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; a symlink, FIFO, device or larger
    file is refused without blocking or reading past the limit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        reason = "a symlink" if os.path.islink(path) else err.strerror
        raise AgentError(f"{path}: cannot read the {what} ({reason})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise AgentError(f"{path}: the {what} is not a regular file")
        if info.st_size > limit:
            raise AgentError(f"{path}: the {what} has {info.st_size} bytes, more than {limit}")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise AgentError(f"{path}: the {what} grew past {limit} bytes while read")
    return data


def _manifest(text: bytes, where: Path) -> Manifest:
    """The manifest in ``text``, every field checked; a trace must travel inside it."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise AgentError(f"{where}: unreadable manifest ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AgentError(f"{where}: not an hmk8s agent manifest")
    if data.get("version") != FORMAT_VERSION:
        raise AgentError(
            f"{where}: format version {data.get('version')}, this reads {FORMAT_VERSION}"
        )
    try:
        manifest = Manifest(**data)
    except ValidationError as err:
        raise AgentError(f"{where}: {validation_problems(err)}") from None
    if isinstance(manifest.usecase_config.get("trace"), str):
        raise AgentError(f"{where}: usecase_config.trace names a file; an export holds its rows")
    return manifest


def _params_limit(template: Any) -> int:
    """The most bytes a parameter file of the network ``template`` can take."""
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(template))
    return min(size + PARAMS_OVERHEAD_BYTES, MAX_PARAMS_BYTES)


def _load_export(folder: Path, key: Key | None = None) -> Agent:
    text = _read_regular(folder / MANIFEST, MAX_MANIFEST_BYTES, "manifest")
    if key is not None:
        _verify(key, text, folder)
    manifest = _manifest(text, folder / MANIFEST)
    template = _template(
        manifest.hidden, manifest.num_actions, manifest.obs_dim, manifest.layer_norm
    )
    blob = _read_regular(folder / PARAMS, _params_limit(template), "parameter file")
    try:
        params = serialization.msgpack_restore(blob)
    except Exception as err:
        raise AgentError(f"{folder / PARAMS}: not a parameter file ({err})") from None
    _check_weights(params, template, str(folder / PARAMS))
    digest = params_sha256(params)
    if digest != manifest.params_sha256:
        raise AgentError(
            f"{folder}: parameters digest {digest[:16]}… differs from the manifest's "
            f"{manifest.params_sha256[:16]}… (corrupt or mixed export)"
        )
    agent = Agent(manifest, params)
    try:
        check_usecase(agent, manifest.usecase_config)
    except (AgentError, EnvConfigError) as err:
        raise AgentError(f"{folder / MANIFEST}: {err}") from None
    return agent
