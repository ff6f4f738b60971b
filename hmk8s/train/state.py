"""The train state both trainers carry: one pytree, checkpointed whole.

The Anakin loop keeps vectorised env states in ``env_state``; the actor/learner keeps its
per-env episode books there, so both write the same checkpoint format.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from hmk8s.agents import dqn

Array = jax.Array


class TrainState(NamedTuple):
    """Everything a chunk reads and writes; one pytree, checkpointed whole."""

    learner: dqn.LearnerState
    buffer: Any
    env_state: Any
    obs: Array
    mask: Array
    hint: Array
    episode_return: Array
    env_steps: Array
    rng: Array
