"""The cluster map: which kubeconfig context and namespace plays cluster k, and how to build there.

It is validated once against the use case, so a missing image or a cluster count that does not
match fails before any API call is made.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from hmk8s.configs import CONFIG_DIR
from hmk8s.domain.usecases import CONFIG_NAMES, UseCase, validation_problems

CONFIG_PATH = CONFIG_DIR / "backend" / "k8s.yaml"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ClusterMapError(ValueError):
    """A cluster map that cannot be used; the message names the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClusterRef(_Frozen):
    """Cluster k: a kubeconfig context and the namespace the run lives in."""

    context: str = Field(min_length=1)
    namespace: str

    @model_validator(mode="after")
    def _dns_namespace(self) -> ClusterRef:
        if not _DNS_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a DNS label")
        return self


class Memory(_Frozen):
    request: str = "64Mi"
    limit: str = "128Mi"


class Address(_Frozen):
    """How a proxy reaches an instance: `{service}`, `{namespace}`, `{port}`, `{cluster}`."""

    local: str = "{service}.{namespace}.svc.cluster.local:{port}"
    remote: str = "{service}.{namespace}.svc.clusterset.local:{port}"


class Api(_Frozen):
    """Retry policy: exponential backoff with jitter on 429, 5xx, timeouts and lost connections."""

    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    backoff_base_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=10.0, ge=0)
    retry_after_max_s: float = Field(default=30.0, ge=0)
    max_conflicts: int = Field(default=5, ge=1)


class Latency(_Frozen):
    """Where per-proxy latency comes from.

    `probe`: timed GETs through the proxy's Service (via the API server's service proxy); the
    proxy answers `{"ok": <every hop answered>, "rate": <requests/s it currently receives>}`.
    `prometheus`: instant queries, `query` for the latency (seconds) and `rate_query` for the
    request rate; `$proxy`, `$namespace`, `$run_id` are substituted. They go to
    `prometheus_url` when set, else through the API server to `prometheus_service`
    (`namespace/name:port`) of the proxy's home cluster.
    """

    source: Literal["probe", "prometheus"] = "probe"
    probe_requests: int = Field(default=3, ge=1)
    probe_path: str = "/probe"
    prometheus_url: str | None = None
    prometheus_service: str = "monitoring/prometheus-k8s:9090"
    query: str = 'hmk8s_proxy_latency_seconds{proxy="$proxy",namespace="$namespace"}'
    rate_query: str = 'hmk8s_proxy_requests_per_second{proxy="$proxy",namespace="$namespace"}'

    @model_validator(mode="after")
    def _service_form(self) -> Latency:
        if not re.match(r"^[a-z0-9-]+/[a-z0-9-]+:[0-9]+$", self.prometheus_service):
            raise ValueError("prometheus_service must look like namespace/name:port")
        return self


class ClusterMap(_Frozen):
    """The whole backend config (`configs/backend/k8s.yaml`)."""

    name: Literal["k8s"] = "k8s"
    kubeconfig: str | None = None
    run_id: str | None = None
    clusters: tuple[ClusterRef, ...] = Field(min_length=1)
    images: dict[str, str]
    port: int = Field(default=8080, ge=1, le=65535)
    memory: dict[str, Memory] = Field(default_factory=dict)
    proxy_name: str = "proxy{p}"
    proxy_port: int = Field(default=8080, ge=1, le=65535)
    proxy_image: str = "ghcr.io/hmk8s/proxy:0.2.0"
    chain_configmap: str = "proxy{p}-chain"
    address: Address = Address()
    step_seconds: float | None = Field(default=None, gt=0)
    cpu_scale: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="multiplies every instance's CPU request and limit (and so each request's "
        "CPU cost, which keeps a pod's service rate mu): placements fit a small node",
    )
    ready_timeout_s: float = Field(default=120.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    max_failed_steps: int = Field(
        default=5,
        ge=1,
        description="steps in a row with failed API calls or readings before the env stops",
    )
    allow_env_loss: StrictBool = Field(
        default=False, description="a training run goes on when one of its envs is lost"
    )
    api: Api = Api()
    latency: Latency = Latency()

    @model_validator(mode="after")
    def _consistent(self) -> ClusterMap:
        pairs = [(c.context, c.namespace) for c in self.clusters]
        if len(set(pairs)) != len(pairs):
            raise ValueError("two clusters share a context and namespace")
        unknown = set(self.memory) - set(CONFIG_NAMES)
        if unknown:
            raise ValueError(f"memory names unknown configs {sorted(unknown)}")
        if self.run_id is not None and not _DNS_LABEL.match(self.run_id):
            raise ValueError(f"run_id {self.run_id!r} is not a DNS label")
        for field in ("proxy_name", "chain_configmap"):
            names = {n for _, n, _, _ in string.Formatter().parse(getattr(self, field)) if n}
            if names != {"p"}:
                raise ValueError(f"{field} must use exactly the placeholder {{p}}")
        return self

    def check_against(self, usecase: UseCase) -> None:
        """Fail early when the map and the use case disagree."""
        if len(self.clusters) != usecase.clusters.count:
            raise ClusterMapError(
                f"the cluster map lists {len(self.clusters)} clusters, use case "
                f"{usecase.name!r} has {usecase.clusters.count}"
            )
        missing = [f for f in usecase.chain if f not in self.images]
        if missing:
            raise ClusterMapError(f"images: no image for the chain's functions {missing}")

    def memory_of(self, config: str) -> Memory:
        return self.memory.get(config, Memory())

    def step_duration(self, usecase: UseCase) -> float:
        return self.step_seconds if self.step_seconds is not None else usecase.step_seconds


def load_cluster_map(
    spec: str | Path | Mapping[str, Any] | None = None, **overrides: Any
) -> ClusterMap:
    """Load a cluster map from a mapping (e.g. a Hydra node), a YAML path, or the default file."""
    if _is_omegaconf(spec):
        from omegaconf import OmegaConf

        spec = OmegaConf.to_container(spec, resolve=True)
    if spec is None or isinstance(spec, str | Path):
        path = Path(spec) if spec is not None else CONFIG_PATH
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ClusterMapError(f"{path}: cannot read ({err.strerror})") from err
        except yaml.YAMLError as err:
            raise ClusterMapError(f"{path}: malformed YAML: {err}") from err
        origin = str(path)
    else:
        data, origin = spec, "<mapping>"
    if not isinstance(data, Mapping):
        raise ClusterMapError(f"{origin}: expected a mapping at the top level")
    merged = {**dict(data), **overrides}
    try:
        return ClusterMap.model_validate(merged)
    except ValidationError as err:
        raise ClusterMapError(f"{origin}: {validation_problems(err)}") from None


def _is_omegaconf(spec: object) -> bool:
    return type(spec).__module__.startswith("omegaconf")


#: Settings of the actor/learner under ``backend.actor``: taken out of the backend mapping
#: before the rest is read as a cluster map.
ACTOR_KEYS = (
    "cluster_sets",
    "queue_size",
    "batch_window_s",
    "burst",
    "max_env_failures",
    "failure_backoff_s",
    "shutdown_timeout_s",
    "checkpoint_every",
    "log_every",
    "max_seconds",
    "close_timeout_s",
)


def split_backend(backend: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cluster map data, actor settings) from the ``backend`` config node."""
    data = copy.deepcopy(dict(backend))
    actor = dict(data.pop("actor", None) or {})
    unknown = set(actor) - set(ACTOR_KEYS)
    if unknown:
        raise ClusterMapError(f"backend.actor: unknown keys {sorted(unknown)}; known: {ACTOR_KEYS}")
    return data, actor


def env_cluster_maps(
    data: Mapping[str, Any], num_envs: int, cluster_sets: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """One cluster map (as data) per env: given cluster sets, or namespaces suffixed ``-e<i>``."""
    if cluster_sets is not None and len(cluster_sets) < num_envs:
        raise ClusterMapError(
            f"backend.actor.cluster_sets lists {len(cluster_sets)} sets for {num_envs} envs"
        )
    maps = []
    for i in range(num_envs):
        m = copy.deepcopy(dict(data))
        if cluster_sets is not None:
            m["clusters"] = [dict(c) for c in cluster_sets[i]]
        elif num_envs > 1:
            m["clusters"] = [{**c, "namespace": f"{c['namespace']}-e{i}"} for c in m["clusters"]]
        if m.get("run_id") and num_envs > 1:
            m["run_id"] = f"{m['run_id']}-e{i}"
        maps.append(m)
    return maps


def shipped_backend(name: str) -> dict[str, Any]:
    """A shipped backend config (`configs/backend/<name>.yaml`) with its defaults list composed
    by Hydra, as `backend=<name>` gives it to scripts/train.py."""
    from omegaconf import OmegaConf

    from hmk8s.shell.compose import compose

    return OmegaConf.to_container(compose(name, folder=CONFIG_DIR / "backend"), resolve=True)
