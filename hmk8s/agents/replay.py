"""On-device replay of encoded transitions: flashbax's uniform or prioritised item buffer.

Each entry keeps what the double-DQN / HAQL target needs: the successor's
observation, its action mask and its heuristic hint. ``terminated`` is the only
episode end stored, because a truncated episode still bootstraps.

Prioritised replay (Schaul et al. 2016) samples item ``i`` with probability
``P(i) = p_i^alpha / sum_k p_k^alpha`` from a sum tree, corrects the bias with the importance
weights ``(N P(i))^-beta`` (normalised by their largest in the batch) and, after each update,
sets ``p_i = |TD error| + epsilon`` for the sampled items. ``alpha = 0`` is the uniform buffer
itself, with no sum tree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flashbax as fbx
import jax
import jax.numpy as jnp
from flashbax.buffers.prioritised_trajectory_buffer import SET_BATCH_FN

Array = jax.Array


class Transition(NamedTuple):
    """One replayed transition ``(s, a, r, terminated, s', mask', hint')``."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    next_obs: jax.Array
    next_mask: jax.Array
    next_hint: jax.Array


def make_buffer(capacity: int, min_size: int, batch_size: int, priority_exponent: float = 0.0):
    """Item buffer that takes a batch of transitions (one per env) per ``add``; prioritised
    with exponent ``alpha = priority_exponent`` when that is above 0, else uniform."""
    if priority_exponent == 0.0:
        return fbx.make_item_buffer(
            max_length=capacity,
            min_length=min_size,
            sample_batch_size=batch_size,
            add_sequences=False,
            add_batches=True,
        )
    device = jax.default_backend() if jax.default_backend() in SET_BATCH_FN else "cpu"
    buffer = fbx.make_prioritised_item_buffer(
        max_length=capacity,
        min_length=min_size,
        sample_batch_size=batch_size,
        add_sequences=False,
        add_batches=True,
        priority_exponent=priority_exponent,
        device=device,
    )
    return buffer.replace(add=_at_max_priority(buffer.add, SET_BATCH_FN[device]))


def _at_max_priority(add: Any, set_batch: Any) -> Any:
    """``add`` that gives the new items the largest priority recorded so far, as PER does.

    flashbax 0.1.3 writes that priority through an integer array (``full_like`` of the item
    indices), so new items would get its floor; this sets their leaves again, exactly. In an
    item buffer the ``n`` new items sit at ``running_index + [0, n)`` modulo the capacity.
    """

    def add_exact(state: Any, batch: Transition) -> Any:
        state_after = add(state, batch)
        tree = state_after.sum_tree_state
        n = jax.tree.leaves(batch)[0].shape[0]
        indices = (state.running_index + jnp.arange(n)) % tree.capacity
        top = jnp.full((n,), tree.max_recorded_priority, jnp.float32)
        return state_after.replace(sum_tree_state=set_batch(tree, indices, top))

    return add_exact


def priority_state(state: Any) -> Any:
    """What an update changes in a replay state: a prioritised buffer's sum tree; ``None``
    (an empty pytree) for a uniform buffer, whose updates change nothing in it."""
    return getattr(state, "sum_tree_state", None)


def with_priority_state(state: Any, priorities: Any) -> Any:
    """``state`` with the sum tree ``priorities`` (from `priority_state`) put back."""
    return state if priorities is None else state.replace(sum_tree_state=priorities)


def importance_weights(probabilities: Array, beta: float) -> Array:
    """``(N P(i))^-beta`` over the batch's largest, i.e. ``(min_j P(j) / P(i))^beta`` (``N``
    cancels). An item of probability 0, a leaf the sum tree's float rounding reached past the
    stored items, gets weight 0 so it does not train."""
    drawn = probabilities > 0
    smallest = jnp.min(jnp.where(drawn, probabilities, jnp.inf))
    return jnp.where(drawn, (smallest / jnp.where(drawn, probabilities, 1.0)) ** beta, 0.0)


def new_priorities(td_error: Array, probabilities: Array, epsilon: float) -> Array:
    """``|TD error| + epsilon`` for the sampled items; 0 keeps a probability-0 draw unsampled."""
    return jnp.where(probabilities > 0, jnp.abs(td_error) + epsilon, 0.0)


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
