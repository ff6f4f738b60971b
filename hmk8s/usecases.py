"""Use cases as validated, immutable data.

A use case (EHR, ML, STREAM, or a user's own YAML) fixes everything the
simulator and the Kubernetes backend need: the chain, the proxies and their
load profiles, the function catalogue, the clusters, the SLA and the reward
weights. Loading validates it once, so a typo fails with the file and the
field named instead of surfacing as a shape error deep inside `jit`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hmk8s.configs import CONFIG_DIR as PACKAGE_CONFIGS

CONFIG_DIR = PACKAGE_CONFIGS / "usecase"
FUNCTION_NAMES = ("encrypt", "decrypt", "firewall")
CONFIG_NAMES = ("small", "medium", "large")


class UseCaseError(ValueError):
    """A use case that cannot be loaded; the message names the source and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FunctionConfig(_Frozen):
    """One resource profile of a function: what a pod requests and how fast it serves."""

    cpu_request: float = Field(gt=0, description="cores requested per pod")
    cpu_limit: float = Field(gt=0, description="cores a busy pod uses")
    mu: float = Field(gt=0, description="service rate per pod, requests/s")
    startup_s: float = Field(ge=0, description="seconds from deploy to ready")

    @model_validator(mode="after")
    def _limit_covers_request(self) -> FunctionConfig:
        if self.cpu_limit < self.cpu_request:
            raise ValueError("cpu_limit must be >= cpu_request")
        return self


class Function(_Frozen):
    """The catalogue entry of a function: its configs, in the order small, medium, large."""

    small: FunctionConfig
    medium: FunctionConfig
    large: FunctionConfig

    def configs(self) -> tuple[FunctionConfig, ...]:
        return tuple(getattr(self, name) for name in CONFIG_NAMES)


class Functions(_Frozen):
    encrypt: Function
    decrypt: Function
    firewall: Function

    def ordered(self) -> tuple[Function, ...]:
        return tuple(getattr(self, name) for name in FUNCTION_NAMES)


class Clusters(_Frozen):
    count: int = Field(ge=1, le=8)
    max_pods: int = Field(ge=1)
    network_delay_ms: tuple[tuple[float, ...], ...]

    @model_validator(mode="after")
    def _square_delay(self) -> Clusters:
        rows = self.network_delay_ms
        if len(rows) != self.count or any(len(r) != self.count for r in rows):
            raise ValueError(f"network_delay_ms must be {self.count}x{self.count}")
        if any(v < 0 or not math.isfinite(v) for r in rows for v in r):
            raise ValueError("network_delay_ms must be finite and >= 0")
        return self


class Proxy(_Frozen):
    """An entry point and its request-rate profile (see docs/environment.md)."""

    home: int = Field(ge=0)
    base_rate: float = Field(ge=0)
    diurnal_amplitude: float = Field(default=0.0, ge=0, le=1)
    diurnal_period_s: float = Field(default=3600.0, gt=0)
    phase: float = 0.0
    burst_prob: float = Field(default=0.0, ge=0, le=1)
    burst_steps: int = Field(default=1, ge=1)
    burst_factor: float = Field(default=1.0, ge=1)
    burst_tail: float = Field(default=0.0, ge=0, description="Pareto shape; 0 = fixed factor")
    noise: float = Field(default=0.0, ge=0, description="log-normal sigma of the per-step rate")

    @model_validator(mode="after")
    def _finite_tail(self) -> Proxy:
        if 0 < self.burst_tail <= 1:
            raise ValueError("burst_tail must be 0 (fixed) or > 1 (finite mean)")
        return self


class Reward(_Frozen):
    alpha: float = Field(gt=0)
    beta: float = Field(gt=0)

    @model_validator(mode="after")
    def _breach_dominates(self) -> Reward:
        if self.beta <= self.alpha:
            raise ValueError(
                "beta must exceed alpha, so that an SLA breach costs more than the pods it saves"
            )
        return self


class UseCase(_Frozen):
    """A validated use case; `trace` holds per-step rates per proxy when replaying a CSV."""

    name: str
    chain: tuple[str, ...] = Field(min_length=1)
    step_seconds: float = Field(gt=0)
    sla_ms: float = Field(gt=0)
    timeout_ms: float = Field(gt=0)
    measurement_noise: float = Field(ge=0)
    reward: Reward
    clusters: Clusters
    functions: Functions
    proxies: tuple[Proxy, ...] = Field(min_length=1)
    trace: tuple[tuple[float, ...], ...] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> UseCase:
        unknown = [f for f in self.chain if f not in FUNCTION_NAMES]
        if unknown:
            raise ValueError(f"chain names unknown functions {unknown}; known: {FUNCTION_NAMES}")
        if len(set(self.chain)) != len(self.chain):
            raise ValueError("chain must not repeat a function")
        for i, proxy in enumerate(self.proxies):
            if proxy.home >= self.clusters.count:
                raise ValueError(
                    f"proxies[{i}].home={proxy.home} but there are {self.clusters.count} clusters"
                )
        if self.timeout_ms <= self.sla_ms:
            raise ValueError("timeout_ms must exceed sla_ms")
        if self.trace is not None:
            if any(len(row) != len(self.proxies) for row in self.trace):
                raise ValueError(f"trace rows must have one rate per proxy ({len(self.proxies)})")
            if any(not math.isfinite(v) or v < 0 for row in self.trace for v in row):
                raise ValueError("trace rates must be finite and >= 0")
        return self

    @property
    def chain_indices(self) -> tuple[int, ...]:
        return tuple(FUNCTION_NAMES.index(f) for f in self.chain)


def read_trace(path: Path, num_proxies: int) -> tuple[tuple[float, ...], ...]:
    """Read a request-rate trace: one row per step, one column per proxy (a header line and
    `#` comments are allowed). Errors name the file's line and column, both from 1."""
    try:
        with path.open(newline="") as fh:
            lines = list(enumerate(csv.reader(fh), start=1))
    except OSError as err:
        raise UseCaseError(f"trace {path}: cannot read ({err.strerror})") from err
    rows = [(n, r) for n, r in lines if r and not r[0].lstrip().startswith("#")]
    if rows and not _is_number(rows[0][1][0]):
        rows = rows[1:]
    if not rows:
        raise UseCaseError(f"trace {path}: no rows")
    trace = []
    for lineno, row in rows:
        if len(row) != num_proxies:
            raise UseCaseError(
                f"trace {path}: line {lineno} has {len(row)} columns, expected {num_proxies}"
            )
        values = []
        for col, cell in enumerate(row, start=1):
            if not _is_number(cell) or not math.isfinite(float(cell)) or float(cell) < 0:
                raise UseCaseError(
                    f"trace {path}: line {lineno}, column {col}: {cell!r} is not a finite rate >= 0"
                )
            values.append(float(cell))
        trace.append(tuple(values))
    return tuple(trace)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def validation_problems(err: ValidationError) -> str:
    """Every problem pydantic found, as `field.path: message`, for one-line config errors."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
    )


def available_usecases() -> tuple[str, ...]:
    """Names of the shipped use cases: the YAML files of configs/usecase/ that define a chain."""
    names = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        data = _read_yaml(path)
        if isinstance(data, Mapping) and "chain" in data:
            names.append(path.stem)
    return tuple(names)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise UseCaseError(f"{path}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise UseCaseError(f"{path}: malformed YAML: {err}") from err


def load_usecase(
    spec: str | Path | Mapping[str, Any], *, source: str | None = None, base_dir: Path | None = None
) -> UseCase:
    """Load a use case from a built-in name (`ml`), a YAML path, or an already-parsed mapping.

    A `trace:` entry names a CSV file (relative to the YAML's folder, or `base_dir`) whose rows
    replace the synthetic load profile.
    """
    if isinstance(spec, Mapping):
        data, origin = dict(spec), source or "<mapping>"
        folder = base_dir or Path.cwd()
    else:
        path = Path(spec)
        if not path.suffix:
            path = CONFIG_DIR / f"{spec}.yaml"
            if spec not in available_usecases():
                raise UseCaseError(
                    f"unknown use case {str(spec)!r}; available: {', '.join(available_usecases())}"
                )
        data, origin, folder = _read_yaml(path), source or str(path), path.parent
    if not isinstance(data, Mapping):
        raise UseCaseError(f"{origin}: expected a mapping at the top level")
    data = dict(data)
    trace = data.get("trace")
    if isinstance(trace, str):
        trace_path = Path(trace) if Path(trace).is_absolute() else folder / trace
        data["trace"] = read_trace(trace_path, len(data.get("proxies") or ()))
    try:
        return UseCase.model_validate(data)
    except ValidationError as err:
        raise UseCaseError(f"{origin}: {validation_problems(err)}") from None
