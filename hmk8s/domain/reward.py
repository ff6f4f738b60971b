"""The reward: R = alpha * R_res + beta * R_perf.

R_res  = 1 - pods_total / pods_max              (fewer pods is better; pods_max = K * max_pods)
R_perf = clip(1 - 2 * max(0, L - 1), -1, 1)     (L: request-weighted latency / SLA ratio)

Any latency at or under the SLA earns the full R_perf = 1; a breach of x (L = 1 + x) costs
2 * beta * x, down to R_perf = -1 at L >= 2. Use cases require beta > alpha, so a full breach
(a swing of 2 * beta) always costs more than freeing every pod could gain (alpha).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def perf_reward(latency_ratio: jax.Array) -> jax.Array:
    return jnp.clip(1.0 - 2.0 * jnp.maximum(0.0, latency_ratio - 1.0), -1.0, 1.0)


def resource_reward(pods_total: jax.Array, pods_max: int | jax.Array) -> jax.Array:
    return 1.0 - pods_total / pods_max


def reward(
    pods_total: jax.Array,
    latency_ratio: jax.Array,
    *,
    alpha: float | jax.Array,
    beta: float | jax.Array,
    pods_max: int | jax.Array,
) -> jax.Array:
    return alpha * resource_reward(pods_total, pods_max) + beta * perf_reward(latency_ratio)
