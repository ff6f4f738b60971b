"""The env settings a user gives (start mode, encoder, no-op, episode length), checked, and
turned with a use case into the arrays of `EnvParams` once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hmk8s.configs import shipped_value
from hmk8s.domain.encoders import ENCODERS
from hmk8s.domain.params import EnvParams
from hmk8s.domain.spaces import ActionLayout
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES, UseCase

START_MODES = ("empty", "minimal", "random")
#: The env settings a key nobody set gets: the root config's ``env`` block (configs/config.yaml),
#: for the trainer, `hmk8s.sim.make`, the gymnasium envs and the policies alike.
ENV_DEFAULTS: dict[str, Any] = shipped_value("env")


class EnvConfigError(ValueError):
    """An env setting that is unknown or out of range."""


def validate_env_config(env_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and refuse unknown keys or bad values, naming them."""
    cfg = dict(ENV_DEFAULTS)
    for key, value in dict(env_cfg or {}).items():
        if key not in ENV_DEFAULTS:
            raise EnvConfigError(f"env.{key}: unknown setting; known: {', '.join(ENV_DEFAULTS)}")
        cfg[key] = value
    if cfg["start"] not in START_MODES:
        raise EnvConfigError(f"env.start={cfg['start']!r}: expected one of {START_MODES}")
    if cfg["encoder"] not in ENCODERS:
        known = tuple(ENCODERS)
        raise EnvConfigError(f"env.encoder={cfg['encoder']!r}: expected one of {known}")
    if not isinstance(cfg["noop"], bool):
        raise EnvConfigError(f"env.noop={cfg['noop']!r}: expected true or false")
    steps = cfg["episode_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise EnvConfigError(f"env.episode_steps={steps!r}: expected an integer >= 1")
    return cfg


def params_from_usecase(usecase: UseCase, env_cfg: Mapping[str, Any] | None = None) -> EnvParams:
    """Turn a validated use case and env settings into simulator parameters."""
    cfg = validate_env_config(env_cfg)
    configs = [f.configs() for f in usecase.functions.ordered()]
    startup = [
        [math.ceil(c.startup_s / usecase.step_seconds - 1e-9) for c in row] for row in configs
    ]
    proxies = usecase.proxies

    def per_proxy(name: str, dtype=jnp.float32) -> jax.Array:
        return jnp.asarray([getattr(p, name) for p in proxies], dtype)

    layout = ActionLayout(
        clusters=usecase.clusters.count,
        configs=len(CONFIG_NAMES),
        functions=len(FUNCTION_NAMES),
        proxies=len(proxies),
        noop=cfg["noop"],
    )
    trace = usecase.trace if usecase.trace is not None else ((0.0,) * len(proxies),)
    return EnvParams(
        layout=layout,
        chain=usecase.chain_indices,
        start=cfg["start"],
        episode_steps=cfg["episode_steps"],
        max_pods=usecase.clusters.max_pods,
        pending_depth=max(1, max(max(row) for row in startup)),
        default_config=CONFIG_NAMES.index("medium"),
        has_trace=usecase.trace is not None,
        mu=jnp.asarray([[c.mu for c in row] for row in configs], jnp.float32),
        service_rate=jnp.asarray(
            [
                [c.mu if c.service_ms is None else 1000.0 / c.service_ms for c in row]
                for row in configs
            ],
            jnp.float32,
        ),
        wait_factor=jnp.asarray(
            [[(1.0 + c.service_cv2) / 2.0 for c in row] for row in configs], jnp.float32
        ),
        cpu_request=jnp.asarray([[c.cpu_request for c in row] for row in configs], jnp.float32),
        cpu_limit=jnp.asarray([[c.cpu_limit for c in row] for row in configs], jnp.float32),
        startup_steps=jnp.asarray(startup, jnp.int32),
        in_chain=jnp.asarray([i in usecase.chain_indices for i in range(len(FUNCTION_NAMES))]),
        home=per_proxy("home", jnp.int32),
        delay_s=jnp.asarray(usecase.clusters.network_delay_ms, jnp.float32) / 1000.0,
        base_rate=per_proxy("base_rate"),
        diurnal_amplitude=per_proxy("diurnal_amplitude"),
        diurnal_period_s=per_proxy("diurnal_period_s"),
        phase=per_proxy("phase"),
        burst_prob=per_proxy("burst_prob"),
        burst_steps=per_proxy("burst_steps", jnp.int32),
        burst_factor=per_proxy("burst_factor"),
        burst_tail=per_proxy("burst_tail"),
        rate_noise=per_proxy("noise"),
        trace=jnp.asarray(trace, jnp.float32),
        step_seconds=jnp.float32(usecase.step_seconds),
        sla_s=jnp.float32(usecase.sla_ms / 1000.0),
        timeout_s=jnp.float32(usecase.timeout_ms / 1000.0),
        measurement_noise=jnp.float32(usecase.measurement_noise),
        alpha=jnp.float32(usecase.reward.alpha),
        beta=jnp.float32(usecase.reward.beta),
        # the load as the use case defines it: the shifted scenarios (hmk8s.sim.scenarios) set these
        load_scale=jnp.float32(1.0),
        ramp=jnp.float32(0.0),
        flash_start=jnp.int32(0),
        flash_steps=jnp.int32(0),
        flash_factor=jnp.float32(1.0),
        capacity_loss=jnp.zeros(usecase.clusters.count, jnp.float32),
        capacity_loss_step=jnp.int32(0),
    )
