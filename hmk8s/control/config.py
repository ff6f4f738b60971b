"""The controller's typed settings, read from ``key=value`` arguments, and their value checks.

OmegaConf merges the arguments onto these dataclasses, which refuses unknown keys (``guard.foo``)
and wrong types; `validate` refuses values that type-check but make no sense (a negative cap).
Both surface as one `ControlConfigError` line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmk8s.shell.exit import one_line

BACKENDS = ("sim", "k8s")
ON_CONFLICT = ("repair", "hold")
FALLBACKS = ("heuristic", "hpa", "none")
LIVE_MODES = ("auto", "on", "off")
T = TypeVar("T")


class ControlConfigError(ValueError):
    """A setting the controller refuses before it touches any cluster."""


@dataclass
class GuardConfig:
    """Guard rails between the agent and the clusters; a cap of ``null`` is no cap.

    ``protect_chains``: never take the last ready pod serving a routed hop of any proxy.
    ``max_changes`` per ``window_steps``: at most that many applied changes in any window.
    ``hold_on_stale``: no changes while readings are assumed (metrics or latency unreadable)
    or API calls fail.
    ``on_conflict``: when a managed object differs from what was applied (scaled or edited by
    someone else), ``repair`` writes the applied value back, ``hold`` leaves it and holds.
    """

    enabled: bool = True
    protect_chains: bool = True
    max_pods_per_cluster: int | None = None
    max_pods_total: int | None = None
    max_changes: int = 6
    window_steps: int = 10
    hold_on_stale: bool = True
    on_conflict: str = "repair"


@dataclass
class SimConfig:
    """``backend=sim``: the rehearsal episode is `evaluate_policy`'s episode of key ``seed``."""

    seed: int = 0
    start: str | None = None


@dataclass
class ControlConfig:
    """The settings of `scripts/control.py`."""

    agent: str = MISSING
    agent_key: str | None = None
    backend: str = "sim"
    step: int | None = None
    seed: int = 0
    usecase: str | None = None
    steps: int | None = None
    step_seconds: float | None = None
    dry_run: bool = False
    bootstrap: bool = False
    run_id: str | None = None
    cluster_map: str | None = None
    fallback: str = "heuristic"
    guard: GuardConfig = field(default_factory=GuardConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    metrics_port: int | None = None
    log: str | None = None
    live: Any = "auto"  # YAML reads on/off as booleans; `validate` takes them back


@dataclass
class ExportConfig:
    """The settings of `scripts/export_agent.py`."""

    run: str = MISSING
    out: str = MISSING
    step: int | None = None
    seed: int = 0
    usecase: str | None = None
    sign_key: str | None = None


def parse_settings(schema: type[T], args: Sequence[str]) -> T:
    """``key=value`` arguments (dotted keys for nested settings) onto the dataclass ``schema``."""
    bad = [a for a in args if "=" not in a or a.startswith("=")]
    if bad:
        raise ControlConfigError(f"expected key=value arguments, got {bad[0]!r}")
    try:
        return settings_from(schema, OmegaConf.from_dotlist(list(args)))
    except OmegaConfBaseException as err:
        raise ControlConfigError(one_line(err)) from None


def settings_from(schema: type[T], mapping: Any) -> T:
    """A mapping (nested, snake_case keys) onto the dataclass ``schema``: unknown keys and
    wrong types are a `ControlConfigError`."""
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), mapping)
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        raise ControlConfigError(one_line(err)) from None


def parse(args: Sequence[str]) -> ControlConfig:
    """The controller's settings from ``key=value`` arguments, checked."""
    cfg = parse_settings(ControlConfig, args)
    validate(cfg)
    return cfg


def validate(cfg: ControlConfig) -> None:
    """Raise `ControlConfigError` naming every bad value of ``cfg``."""
    errors: list[str] = []
    if cfg.backend not in BACKENDS:
        errors.append(f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
    if cfg.fallback not in FALLBACKS:
        errors.append(f"fallback must be one of {FALLBACKS}, got {cfg.fallback!r}")
    if isinstance(cfg.live, bool):
        cfg.live = "on" if cfg.live else "off"
    if cfg.live not in LIVE_MODES:
        errors.append(f"live must be one of {LIVE_MODES}, got {cfg.live!r}")
    g = cfg.guard
    for name in ("max_pods_per_cluster", "max_pods_total"):
        value = getattr(g, name)
        if value is not None and value < 0:
            errors.append(f"guard.{name} must be >= 0 or null, got {value}")
    if g.max_changes < 0:
        errors.append(f"guard.max_changes must be >= 0, got {g.max_changes}")
    if g.window_steps < 1:
        errors.append(f"guard.window_steps must be >= 1, got {g.window_steps}")
    if g.on_conflict not in ON_CONFLICT:
        errors.append(f"guard.on_conflict must be one of {ON_CONFLICT}, got {g.on_conflict!r}")
    if cfg.steps is not None and cfg.steps < 1:
        errors.append(f"steps must be >= 1 or null, got {cfg.steps}")
    if cfg.step_seconds is not None and not (
        math.isfinite(cfg.step_seconds) and cfg.step_seconds >= 0
    ):
        errors.append(f"step_seconds must be finite and >= 0, got {cfg.step_seconds}")
    if cfg.seed < 0 or (cfg.step is not None and cfg.step < 0):
        errors.append("seed and step must be >= 0")
    if cfg.metrics_port is not None and not 0 <= cfg.metrics_port <= 65535:
        errors.append(f"metrics_port must be in [0, 65535], got {cfg.metrics_port}")
    if cfg.backend == "sim" and (cfg.bootstrap or cfg.run_id or cfg.cluster_map):
        errors.append("bootstrap, run_id and cluster_map apply to backend=k8s only")
    if cfg.dry_run and cfg.bootstrap:
        errors.append("bootstrap=true creates objects; a dry run writes nothing")
    if errors:
        raise ControlConfigError("; ".join(errors))
