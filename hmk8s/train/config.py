"""The typed schema of the root Hydra config, and `resolve`: the one check of a run's settings.

Hydra merges `configs/` onto these dataclasses, which rejects unknown keys and wrong types.
The dataclasses are the schema only: every default is read from the shipped YAML
(`hmk8s.configs.default`), so a value is written once. `resolve` then checks every value,
parses the use case, settles ``agent.lr_decay_updates: auto`` and makes the HAQL-or-DQN
choice, all before any work starts, and returns the `RunSpec` every trainer takes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from hmk8s.agents.config import (
    AGENT_KINDS,
    AUTO,
    SCHEDULE_KINDS,
    AgentConfig,
    HaqlConfig,
    ScheduleConfig,
    decay_updates,
    learner_haql,
    planned_updates,
)
from hmk8s.configs import default, shipped
from hmk8s.domain.settings import EnvConfigError, validate_env_config
from hmk8s.domain.usecases import UseCase, UseCaseError, load_usecase
from hmk8s.train.distributed import DistributedConfig

#: The backends a run trains on (``backend=local`` is a ``k8s`` map of one local node).
BACKENDS = ("sim", "k8s")

# Keys that may differ between a checkpoint's config and the resuming run's: they change how
# long the run goes, what is logged or how the trained agent is evaluated, not what it computes.
RESUME_SAFE_KEYS = (
    "total_steps",
    "run_dir",
    "resume",
    "checkpoint",
    "log",
    "eval",
    "haql.deployed_xi",
    "distributed",
    "cache",
)


#: Bounds that keep a run meaningful: counters are int32 on the device (a margin of one
#: chunk's worth of steps below 2**31), and more envs than this do not fit one device's replay.
MAX_TOTAL_STEPS = 2**31 - 2**26
MAX_NUM_ENVS = 2**18


class ConfigError(ValueError):
    """A config value that would make the run meaningless or crash later."""


@dataclass
class EnvConfig:
    """How the hmk8s environment is built (consumed by `hmk8s.sim.make`)."""

    encoder: str = default("env.encoder")
    noop: bool = default("env.noop")
    start: str = default("env.start")
    episode_steps: int = default("env.episode_steps")


@dataclass
class CheckpointConfig:
    """Orbax checkpoints under ``<run_dir>/checkpoints``."""

    enabled: bool = default("checkpoint.enabled")
    every_chunks: int = default("checkpoint.every_chunks")
    keep: int = default("checkpoint.keep")
    replay: bool = default("checkpoint.replay")


@dataclass
class LogConfig:
    """Host-side outputs between chunks."""

    tensorboard: bool = default("log.tensorboard")
    progress: bool = default("log.progress")


@dataclass
class EvalConfig:
    """Greedy evaluation of the trained Q-network (and baselines on hmk8s)."""

    enabled: bool = default("eval.enabled")
    episodes: int = default("eval.episodes")


@dataclass
class CacheConfig:
    """The user cache of compiled programs and fixed policies' scores (`hmk8s.train.cache`)."""

    dir: str | None = default("cache.dir")
    compile: bool = default("cache.compile")
    scores: bool = default("cache.scores")


@dataclass
class TrainConfig:
    """The root config of `scripts/train.py`. The use case and the backend have default
    choices (``configs/config.yaml``'s defaults list), not default values."""

    usecase: Any = MISSING
    backend: Any = MISSING
    agent: AgentConfig = field(default_factory=AgentConfig)
    heuristic: bool = default("heuristic")
    haql: HaqlConfig = field(default_factory=HaqlConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    seed: int = default("seed")
    seeds: int = default("seeds")
    total_steps: int = default("total_steps")
    num_envs: int = default("num_envs")
    chunk_steps: int = default("chunk_steps")
    run_dir: str | None = default("run_dir")
    resume: str | None = default("resume")
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    halt_on_nan: bool = default("halt_on_nan")
    devices: int | None = default("devices")
    seed_devices: int = default("seed_devices")
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass(frozen=True)
class RunSpec:
    """A checked run: what the trainers, the evaluation and the benchmarks take.

    ``config`` holds every value checked and ``agent.lr_decay_updates`` as a number;
    ``usecase`` is parsed once (None for an env that is not a use case, such as a gymnax
    one); ``haql`` is the heuristic the agent learns with, None for a pure DQN."""

    config: TrainConfig
    name: str
    backend: str
    usecase: UseCase | None
    haql: HaqlConfig | None

    def saved(self) -> dict[str, Any]:
        """The config as a plain dict: what ``config.yaml`` and the checkpoints hold, and what
        a resume compares (`resume_mismatches`)."""
        return dataclasses.asdict(self.config)


def _positive(errors: list[str], name: str, value: float) -> None:
    if value <= 0:
        errors.append(f"{name} must be > 0, got {value}")


def _schedule(errors: list[str], name: str, sched: ScheduleConfig) -> None:
    if sched.kind not in SCHEDULE_KINDS:
        errors.append(f"{name}.kind must be one of {SCHEDULE_KINDS}, got {sched.kind!r}")
    if sched.steps < 0:
        errors.append(f"{name}.steps must be >= 0, got {sched.steps}")
    if sched.kind == "exponential" and (sched.start <= 0 or sched.end <= 0):
        errors.append(f"{name}: an exponential schedule needs start > 0 and end > 0")


def _non_finite(node: Any, path: str = "") -> list[str]:
    """Dotted names of every NaN or infinite float setting in a (nested) dataclass."""
    if dataclasses.is_dataclass(node):
        return [
            bad
            for f in dataclasses.fields(node)
            for bad in _non_finite(getattr(node, f.name), f"{path}{f.name}.")
        ]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{path[:-1]} must be a finite number, got {node}"]
    return []


def resolve(cfg: TrainConfig, name: str | None = None) -> RunSpec:
    """Check every value of ``cfg`` and turn it into the run's `RunSpec`; `ConfigError`, one
    line listing every bad value, when any is bad.

    ``name`` is the use case's name as chosen (``usecase=ml``; default: the name in its
    YAML). A ``cfg.usecase`` of None or unset is a run on an env that is no use case."""
    errors: list[str] = _non_finite(cfg)
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    usecase = _usecase(cfg.usecase, name)
    backend = _backend(cfg)
    errors += _value_errors(cfg, backend)
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    agent = cfg.agent
    decay = decay_updates(agent, cfg.num_envs, cfg.total_steps)
    typed = dataclasses.replace(cfg, agent=dataclasses.replace(agent, lr_decay_updates=decay))
    label = name or (usecase.name if usecase is not None else "")
    return RunSpec(typed, label, backend, usecase, learner_haql(cfg.heuristic, cfg.haql))


def _usecase(node: Any, name: str | None) -> UseCase | None:
    if node is None or node == MISSING:
        return None
    if isinstance(node, UseCase):
        return node
    try:
        return load_usecase(node, source=f"usecase={name}" if name else None)
    except UseCaseError as err:
        raise ConfigError(str(err)) from None


def _backend(cfg: TrainConfig) -> str:
    """The backend's kind: ``sim`` or ``k8s`` (the ``name`` of a backend map)."""
    node = cfg.backend
    if isinstance(node, Mapping):
        return str(node.get("name", "sim"))
    return "sim" if node is None or node == MISSING else str(node)


def _value_errors(cfg: TrainConfig, backend: str) -> list[str]:
    """Every bad value of ``cfg``, each as one phrase naming the setting."""
    errors: list[str] = []
    a = cfg.agent
    for name in ("seeds", "seed_devices", "total_steps", "num_envs", "chunk_steps"):
        _positive(errors, name, getattr(cfg, name))
    if cfg.num_envs > MAX_NUM_ENVS:
        errors.append(f"num_envs must be <= {MAX_NUM_ENVS:,}, got {cfg.num_envs:,}")
    if cfg.total_steps > MAX_TOTAL_STEPS:
        errors.append(
            f"total_steps must be <= {MAX_TOTAL_STEPS:,} (the step counters are 32-bit), "
            f"got {cfg.total_steps:,}"
        )
    if a.learning_starts >= cfg.total_steps:
        errors.append(
            f"agent.learning_starts ({a.learning_starts:,}) must be < total_steps "
            f"({cfg.total_steps:,}): the run would make no update"
        )
    if cfg.seed < 0:
        errors.append(f"seed must be >= 0, got {cfg.seed}")
    if a.kind not in AGENT_KINDS:
        errors.append(f"agent.kind must be one of {AGENT_KINDS}, got {a.kind!r}")
    if a.kind == "pqn":
        _pqn(errors, a, cfg.num_envs)
    if not a.hidden or any(w <= 0 for w in a.hidden):
        errors.append(f"agent.hidden must be a non-empty list of positive widths, got {a.hidden}")
    for name in ("learning_rate", "batch_size", "buffer_size", "updates_per_step"):
        _positive(errors, f"agent.{name}", getattr(a, name))
    for name in ("huber_delta", "max_grad_norm", "target_period"):
        _positive(errors, f"agent.{name}", getattr(a, name))
    if not 0.0 <= a.gamma <= 1.0:
        errors.append(f"agent.gamma must be in [0, 1], got {a.gamma}")
    if not 0.0 < a.target_tau <= 1.0:
        errors.append(f"agent.target_tau must be in (0, 1], got {a.target_tau}")
    if a.lr_decay_updates != AUTO and (
        not isinstance(a.lr_decay_updates, int) or a.lr_decay_updates < 0
    ):
        errors.append(
            f"agent.lr_decay_updates must be {AUTO} or a number >= 0, got {a.lr_decay_updates!r}"
        )
    elif a.lr_decay_updates != AUTO and a.updates_per_step > 0 and cfg.num_envs > 0:
        planned = planned_updates(a, cfg.num_envs, cfg.total_steps)
        if 0 < a.lr_decay_updates < planned:
            errors.append(
                f"agent.lr_decay_updates={a.lr_decay_updates:,} is below the run's "
                f"{planned:,} updates: the learning rate would be 0 for the last "
                f"{planned - a.lr_decay_updates:,}; set agent.lr_decay_updates={AUTO} (or "
                "0 for a constant rate)"
            )
    for name in ("priority_exponent", "priority_beta"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            errors.append(f"agent.{name} must be in [0, 1], got {getattr(a, name)}")
    _positive(errors, "agent.priority_epsilon", a.priority_epsilon)
    if not 0.0 <= a.sla_penalty < float("inf"):
        errors.append(f"agent.sla_penalty must be a finite number >= 0, got {a.sla_penalty}")
    if a.learning_starts < 0:
        errors.append(f"agent.learning_starts must be >= 0, got {a.learning_starts}")
    if a.buffer_size < cfg.num_envs:
        errors.append(f"agent.buffer_size ({a.buffer_size}) must be >= num_envs ({cfg.num_envs})")
    if a.batch_size > a.buffer_size:
        errors.append(
            f"agent.batch_size ({a.batch_size}) must be <= agent.buffer_size ({a.buffer_size})"
        )
    _schedule(errors, "agent.epsilon", a.epsilon)
    if not 0.0 <= a.epsilon.start <= 1.0 or not 0.0 <= a.epsilon.end <= 1.0:
        errors.append("agent.epsilon.start and .end must be in [0, 1]")
    _schedule(errors, "haql.xi", cfg.haql.xi)
    if cfg.haql.eta < 0:
        errors.append(f"haql.eta must be >= 0, got {cfg.haql.eta}")
    if cfg.haql.deployed_xi is not None and cfg.haql.deployed_xi < 0:
        errors.append(f"haql.deployed_xi must be >= 0 or null, got {cfg.haql.deployed_xi}")
    try:
        validate_env_config(dataclasses.asdict(cfg.env))
    except EnvConfigError as err:
        errors.append(str(err))
    _positive(errors, "checkpoint.every_chunks", cfg.checkpoint.every_chunks)
    _positive(errors, "checkpoint.keep", cfg.checkpoint.keep)
    if cfg.eval.episodes < 0:
        errors.append(f"eval.episodes must be >= 0, got {cfg.eval.episodes}")
    errors += _backend_errors(cfg, backend)
    return errors


def _backend_errors(cfg: TrainConfig, backend: str) -> list[str]:
    """What the backend cannot run: the clusters train one DQN / HAQL seed on one device."""
    if backend not in BACKENDS:
        return [f"backend={backend}: expected sim, k8s or local"]
    if backend == "sim":
        return []
    errors = []
    if cfg.seeds != 1:
        errors.append("backend=k8s trains one seed at a time (seeds=1)")
    if cfg.seed_devices != 1:
        errors.append("backend=k8s trains on one device: seed_devices is for backend=sim")
    if cfg.agent.kind != "dqn":
        errors.append(
            f"backend=k8s trains DQN / HAQL from a replay: agent.kind={cfg.agent.kind} runs "
            "on backend=sim"
        )
    return errors


def _pqn(errors: list[str], a: AgentConfig, num_envs: int) -> None:
    """PQN's own settings: a lambda in [0, 1] and minibatches that split a rollout evenly."""
    p = a.pqn
    if not 0.0 <= p.td_lambda <= 1.0:
        errors.append(f"agent.pqn.td_lambda must be in [0, 1], got {p.td_lambda}")
    for name in ("rollout_steps", "epochs", "minibatches"):
        _positive(errors, f"agent.pqn.{name}", getattr(p, name))
    samples = p.rollout_steps * num_envs
    if p.minibatches > 0 and samples > 0 and samples % p.minibatches:
        errors.append(
            f"agent.pqn.minibatches={p.minibatches} must divide the rollout's {samples} "
            "transitions (agent.pqn.rollout_steps x num_envs)"
        )


def config_differences(
    a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in ``a``, value in ``b``) of every setting two plain config dicts
    disagree on, the keys ``ignore`` names (and all below them) excepted."""
    out: list[tuple[str, Any, Any]] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if path in ignore:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                below = f"{path}.{key}" if path else key
                walk(x.get(key, "<absent>"), y.get(key, "<absent>"), below)
        elif x != y:
            out.append((path, x, y))

    walk(a, b, "")
    return out


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two plain config dicts, safe keys excepted. A
    setting the checkpoint's config lacks was added after it was written, so that run had the
    setting's shipped default (`hmk8s.configs.shipped`, which keeps the earlier behaviour)."""
    filled = _with_defaults(saved, current, shipped())
    return [
        f"{path}: checkpoint has {was!r}, now {now!r}"
        for path, was, now in config_differences(filled, current, RESUME_SAFE_KEYS)
    ]


def _with_defaults(
    saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any]:
    """``saved`` with each key of ``current`` it lacks taken from ``defaults`` (recursively),
    where ``defaults`` has one."""
    out = dict(saved)
    for key, now in current.items():
        if key not in defaults:
            continue
        if key not in out:
            out[key] = defaults[key]
        elif (
            isinstance(out[key], dict) and isinstance(now, dict) and isinstance(defaults[key], dict)
        ):
            out[key] = _with_defaults(out[key], now, defaults[key])
    return out
