"""The typed schema of the root Hydra config, and value checks Hydra cannot do.

Hydra merges `configs/` onto these dataclasses, which rejects unknown keys and
wrong types; `validate` then rejects bad values before any work starts. The
trainer core reads the same dataclasses, so a setting has one definition.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from hmk8s.agents.config import (
    AGENT_KINDS,
    SCHEDULE_KINDS,
    AgentConfig,
    HaqlConfig,
    ScheduleConfig,
    planned_updates,
)
from hmk8s.train.distributed import DistributedConfig

ENCODERS = ("onehot", "continuous")
STARTS = ("empty", "minimal", "random")

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

    encoder: str = "continuous"
    noop: bool = True
    start: str = "empty"
    episode_steps: int = 120


@dataclass
class CheckpointConfig:
    """Orbax checkpoints under ``<run_dir>/checkpoints``."""

    enabled: bool = True
    every_chunks: int = 1
    keep: int = 3
    replay: bool = True


@dataclass
class LogConfig:
    """Host-side outputs between chunks."""

    tensorboard: bool = True
    progress: bool = True


@dataclass
class EvalConfig:
    """Greedy evaluation of the trained Q-network (and baselines on hmk8s)."""

    enabled: bool = True
    episodes: int = 32


@dataclass
class CacheConfig:
    """The user cache of compiled programs and fixed policies' scores (`hmk8s.train.cache`)."""

    dir: str | None = None
    compile: bool = True
    scores: bool = True


@dataclass
class TrainConfig:
    """The root config of `scripts/train.py`."""

    usecase: Any = MISSING
    backend: Any = MISSING
    agent: AgentConfig = field(default_factory=AgentConfig)
    heuristic: bool = False
    haql: HaqlConfig = field(default_factory=HaqlConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    seed: int = 0
    seeds: int = 1
    total_steps: int = 300_000
    num_envs: int = 64
    chunk_steps: int = 50_000
    run_dir: str | None = None
    resume: str | None = None
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    halt_on_nan: bool = True
    devices: int | None = None
    seed_devices: int = 1
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


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


def validate(cfg: TrainConfig) -> None:
    """Raise `ConfigError` listing every bad value in ``cfg``."""
    errors: list[str] = _non_finite(cfg)
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
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
    if a.lr_decay_updates < 0:
        errors.append(f"agent.lr_decay_updates must be >= 0, got {a.lr_decay_updates}")
    elif a.updates_per_step > 0 and cfg.num_envs > 0:
        planned = planned_updates(a, cfg.num_envs, cfg.total_steps)
        if 0 < a.lr_decay_updates < planned:
            errors.append(
                f"agent.lr_decay_updates={a.lr_decay_updates:,} is below the run's "
                f"{planned:,} updates: the learning rate would be 0 for the last "
                f"{planned - a.lr_decay_updates:,}; set agent.lr_decay_updates={planned} "
                "(or 0 for a constant rate)"
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
    if cfg.env.encoder not in ENCODERS:
        errors.append(f"env.encoder must be one of {ENCODERS}, got {cfg.env.encoder!r}")
    if cfg.env.start not in STARTS:
        errors.append(f"env.start must be one of {STARTS}, got {cfg.env.start!r}")
    _positive(errors, "env.episode_steps", cfg.env.episode_steps)
    _positive(errors, "checkpoint.every_chunks", cfg.checkpoint.every_chunks)
    _positive(errors, "checkpoint.keep", cfg.checkpoint.keep)
    if cfg.eval.episodes < 0:
        errors.append(f"eval.episodes must be >= 0, got {cfg.eval.episodes}")
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))


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
    setting's built-in default (`TrainConfig`'s, which keeps the earlier behaviour)."""
    filled = _with_defaults(saved, current, dataclasses.asdict(TrainConfig()))
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
