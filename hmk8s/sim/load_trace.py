"""A use case's request rates as a trace: what the simulator's load process draws, step by step,
for the load generator to replay on real clusters (deploy/images/loadgen.py)."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from hmk8s.domain.params import EnvParams
from hmk8s.domain.settings import params_from_usecase
from hmk8s.domain.state import EnvState
from hmk8s.domain.usecases import UseCase
from hmk8s.sim.dynamics import request_rates
from hmk8s.sim.env import ClusterEnv


def rate_trace(usecase: UseCase, steps: int, seed: int) -> np.ndarray:
    """Requests/s per step (rows) and proxy (columns), drawn by the simulator's `request_rates`
    (diurnal wave, bursts, noise; or the use case's own trace) from an episode's start."""
    rates = _draw(jax.random.PRNGKey(seed), params_from_usecase(usecase), steps)
    return np.asarray(rates, dtype=np.float64)


@partial(jax.jit, static_argnums=2)
def _draw(key: jax.Array, params: EnvParams, steps: int) -> jax.Array:
    k_reset, k_rates = jax.random.split(key)
    _, state = ClusterEnv().reset(k_reset, params)

    def step(state: EnvState, key: jax.Array) -> tuple[EnvState, jax.Array]:
        rates, left, level = request_rates(key, state, params)
        return state.replace(time=state.time + 1, burst_left=left, burst_level=level), rates

    return jax.lax.scan(step, state, jax.random.split(k_rates, steps))[1]


def trace_csv(usecase: UseCase, rates: np.ndarray) -> str:
    """The trace in the CSV form the simulator and the load generator read: a header naming the
    proxies, then a row per step."""
    header = ",".join(f"proxy{p}" for p in range(len(usecase.proxies)))
    return "\n".join([header, *(",".join(f"{r:.3f}" for r in row) for row in rates)]) + "\n"
