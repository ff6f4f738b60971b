"""Use cases as validated, immutable data.

A use case (EHR, ML, STREAM, or a user's own YAML) fixes everything the
simulator and the Kubernetes backend need: the chain, the proxies and their
load profiles, the function catalogue, the clusters, the SLA and the reward
weights. Loading validates it once, so a typo fails with the file and the
field named instead of surfacing as a shape error deep inside `jit`.

Every number must be finite, and each has an upper bound, because the simulator computes in
float32 (largest value 3.4e38) and a NaN or an overflow there would not fail: it would train on
NaN rewards. With the bounds below a proxy sends at most
base_rate * 2 (diurnal wave) * (1 + 10 (burst_factor - 1)) (capped Pareto burst)
* e^(5.5 noise) (no float32 normal draw exceeds 5.5) = 1e9 * 2 * 991 * 6e4 ~ 1.2e17 requests/s,
and a backlog grows by at most every proxy's rate times step_seconds per step: even a thousand
proxies over a million steps of a day each stay near 1e31, far from overflow.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hmk8s.configs import CONFIG_DIR as PACKAGE_CONFIGS

CONFIG_DIR = PACKAGE_CONFIGS / "usecase"
FUNCTION_NAMES = ("encrypt", "decrypt", "firewall")
CONFIG_NAMES = ("small", "medium", "large")

#: Requests/s: a proxy's base rate, a trace entry, a pod's service rate (a thousand times the
#: largest real services, and small enough that every product stays finite in float32).
RATE_MAX = 1e9
#: Log-normal sigma of a rate or a measurement: e^2 is already a factor of 7 per deviation.
NOISE_MAX = 2.0
#: Milliseconds (an hour) for an SLA, a timeout or a network delay.
TIME_MS_MAX = 3_600_000.0
#: Reward weights: |Q| <= (alpha + beta) / (1 - gamma) stays under 1e6 for gamma <= 0.999,
#: where float32 still resolves differences of 0.06.
REWARD_WEIGHT_MAX = 1_000.0
#: How many of pydantic's problems one error line lists.
PROBLEMS_SHOWN = 5

Rate = Annotated[float, Field(ge=0, le=RATE_MAX)]
DelayMs = Annotated[float, Field(ge=0, le=TIME_MS_MAX)]


class UseCaseError(ValueError):
    """A use case that cannot be loaded; the message names the source and the field."""


class _Frozen(BaseModel):
    """Immutable, no unknown keys, and no NaN or infinity in any float."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class FunctionConfig(_Frozen):
    """One resource profile of a function: what a pod requests and how fast it serves."""

    cpu_request: float = Field(gt=0, le=1024, description="cores requested per pod")
    cpu_limit: float = Field(gt=0, le=1024, description="cores a busy pod uses")
    mu: float = Field(gt=0, le=RATE_MAX, description="service rate per pod, requests/s")
    startup_s: float = Field(ge=0, le=3600, description="seconds from deploy to ready")
    service_ms: float | None = Field(
        default=None,
        gt=0,
        le=TIME_MS_MAX,
        description="a request's service time on an idle pod; null: 1000 / mu (a pod that "
        "serves one request at a time at its full rate). Calibrated on a real node, where a "
        "pod's CPU quota lets a request run faster than the pod's throughput suggests",
    )
    service_cv2: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="squared coefficient of variation of a request's service time, for the "
        "M/G/1 queueing wait (Pollaczek-Khinchine): 1 an exponential service (M/M/1), 0 a fixed "
        "one (M/D/1, half the wait). Calibrated on a real node, whose functions do nearly the "
        "same work per request",
    )

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
    max_pods: int = Field(ge=1, le=150_000, description="Kubernetes' limit for one cluster")
    network_delay_ms: tuple[tuple[DelayMs, ...], ...]

    @model_validator(mode="after")
    def _square_delay(self) -> Clusters:
        rows = self.network_delay_ms
        if len(rows) != self.count or any(len(r) != self.count for r in rows):
            raise ValueError(f"network_delay_ms must be {self.count}x{self.count}")
        return self


class Proxy(_Frozen):
    """An entry point and its request-rate profile (see docs/environment.md)."""

    home: int = Field(ge=0)
    base_rate: Rate
    diurnal_amplitude: float = Field(default=0.0, ge=0, le=1)
    diurnal_period_s: float = Field(default=3600.0, gt=0, le=366 * 86_400)
    phase: float = Field(default=0.0, ge=0, lt=math.tau, description="radians into the wave")
    burst_prob: float = Field(default=0.0, ge=0, le=1)
    burst_steps: int = Field(default=1, ge=1, le=1_000_000)
    burst_factor: float = Field(default=1.0, ge=1, le=100)
    burst_tail: float = Field(
        default=0.0, ge=0, le=100, description="Pareto shape; 0 = fixed factor"
    )
    noise: float = Field(
        default=0.0, ge=0, le=NOISE_MAX, description="log-normal sigma of the per-step rate"
    )

    @model_validator(mode="after")
    def _finite_tail(self) -> Proxy:
        if 0 < self.burst_tail <= 1:
            raise ValueError("burst_tail must be 0 (fixed) or > 1 (finite mean)")
        return self


class Reward(_Frozen):
    alpha: float = Field(gt=0, le=REWARD_WEIGHT_MAX)
    beta: float = Field(gt=0, le=REWARD_WEIGHT_MAX)

    @model_validator(mode="after")
    def _breach_dominates(self) -> Reward:
        if self.beta <= self.alpha:
            raise ValueError(
                "beta must exceed alpha, so that an SLA breach costs more than the pods it saves"
            )
        return self


class UseCase(_Frozen):
    """A validated use case; `trace` holds per-step rates per proxy when replaying a CSV.

    `step_seconds` is at least one second: Kubernetes reports readiness and CPU metrics at
    whole seconds, so real clusters cannot show a shorter step, and the fluid queue
    (rates averaged over a step) needs a step that spans many requests. It also bounds a pod's
    start-up, `ceil(startup_s / step_seconds)` <= 3600 steps, which sizes the pending-pod array.
    """

    name: str
    chain: tuple[str, ...] = Field(min_length=1)
    step_seconds: float = Field(ge=1, le=86_400)
    sla_ms: float = Field(gt=0, le=TIME_MS_MAX)
    timeout_ms: float = Field(gt=0, le=TIME_MS_MAX)
    measurement_noise: float = Field(ge=0, le=NOISE_MAX)
    reward: Reward
    clusters: Clusters
    functions: Functions
    proxies: tuple[Proxy, ...] = Field(min_length=1)
    trace: tuple[tuple[Rate, ...], ...] | None = None

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
            if proxy.diurnal_period_s < 2 * self.step_seconds:
                raise ValueError(
                    f"proxies[{i}].diurnal_period_s={proxy.diurnal_period_s} is shorter than two "
                    f"steps ({2 * self.step_seconds} s): the sampled wave would alias"
                )
        if self.timeout_ms <= self.sla_ms:
            raise ValueError("timeout_ms must exceed sla_ms")
        if self.trace is not None:
            if not self.trace:
                raise ValueError("trace must have at least one row")
            if any(len(row) != len(self.proxies) for row in self.trace):
                raise ValueError(f"trace rows must have one rate per proxy ({len(self.proxies)})")
        return self

    @property
    def chain_indices(self) -> tuple[int, ...]:
        return tuple(FUNCTION_NAMES.index(f) for f in self.chain)


def read_trace(path: Path, num_proxies: int) -> tuple[tuple[float, ...], ...]:
    """Read a request-rate trace: one row per step, one column per proxy (a header line and
    `#` comments are allowed). Errors name the file's line and column, both from 1."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            lines = list(enumerate(csv.reader(fh), start=1))
    except OSError as err:
        raise UseCaseError(f"trace {path}: cannot read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise UseCaseError(f"trace {path}: not UTF-8 text (byte {err.start})") from err
    except csv.Error as err:
        raise UseCaseError(f"trace {path}: not a CSV file ({err})") from err
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
    """The problems pydantic found, as `field.path=value: message` (the value when it is a
    scalar), the first `PROBLEMS_SHOWN` of them, for one-line config errors.

    A list whose items all failed is also reported as too short; that echo is left out."""
    errors = err.errors()
    inner = {e["loc"][:n] for e in errors for n in range(len(e["loc"]))}
    problems = [_problem(e) for e in errors if not (e["type"] == "too_short" and e["loc"] in inner)]
    shown = "; ".join(problems[:PROBLEMS_SHOWN])
    more = len(problems) - PROBLEMS_SHOWN
    return f"{shown}; and {more} more" if more > 0 else shown


def _problem(error: Mapping[str, Any]) -> str:
    """One problem: a validator's own message as it wrote it, pydantic's after the field."""
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    where, value = ".".join(str(p) for p in error["loc"]), error.get("input")
    if not where:
        return message
    if isinstance(value, (bool, int, float, str)):
        where = f"{where}={value!r}" if isinstance(value, str) else f"{where}={value}"
    return f"{where}: {message}"


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
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UseCaseError(f"{path}: cannot read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise UseCaseError(f"{path}: not UTF-8 text (byte {err.start})") from err
    except yaml.YAMLError as err:
        raise UseCaseError(f"{path}: malformed YAML: {' '.join(str(err).split())}") from err


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
    elif not isinstance(spec, (str, Path)):
        raise UseCaseError(f"{source or '<data>'}: expected a mapping at the top level")
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
        try:
            data["trace"] = read_trace(trace_path, len(data.get("proxies") or ()))
        except UseCaseError as err:
            raise UseCaseError(f"{origin}: {err}") from None
    try:
        return UseCase.model_validate(data)
    except ValidationError as err:
        raise UseCaseError(f"{origin}: {validation_problems(err)}") from None
