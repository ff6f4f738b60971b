"""On-device uniform replay of encoded transitions (a flashbax item buffer).

Each entry keeps what the double-DQN / HAQL target needs: the successor's
observation, its action mask and its heuristic hint. ``terminated`` is the only
episode end stored, because a truncated episode still bootstraps.
"""

from __future__ import annotations

from typing import NamedTuple

import flashbax as fbx
import jax
import jax.numpy as jnp


class Transition(NamedTuple):
    """One replayed transition ``(s, a, r, terminated, s', mask', hint')``."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    next_obs: jax.Array
    next_mask: jax.Array
    next_hint: jax.Array


def make_buffer(capacity: int, min_size: int, batch_size: int):
    """Item buffer that takes a batch of transitions (one per env) per ``add``."""
    return fbx.make_item_buffer(
        max_length=capacity,
        min_length=min_size,
        sample_batch_size=batch_size,
        add_sequences=False,
        add_batches=True,
    )


def example_transition(obs: jax.Array, num_actions: int) -> Transition:
    """A zero transition with the stored shapes and dtypes, to initialise the buffer."""
    return Transition(
        obs=jnp.zeros_like(obs),
        action=jnp.zeros((), jnp.int32),
        reward=jnp.zeros((), jnp.float32),
        terminated=jnp.zeros((), jnp.bool_),
        next_obs=jnp.zeros_like(obs),
        next_mask=jnp.zeros((num_actions,), jnp.bool_),
        next_hint=jnp.zeros((), jnp.int32),
    )
