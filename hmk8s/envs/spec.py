"""The functional environment interface the trainer consumes.

The trainer never sees a structured hmk8s observation: an adapter turns any
gymnax-style environment (the hmk8s simulator, gymnax's CartPole, ...) into
these pure functions of encoded arrays, so the learner is tested on problems
nobody here wrote and runs unchanged on every use case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Array = jax.Array


class Timestep(NamedTuple):
    """What one env step hands the learner.

    `obs`/`mask`/`hint` describe the state the agent acts on next (after an
    automatic reset when the episode ended); `next_obs`/`next_mask`/`next_hint`
    describe the true successor of the action (before that reset), which is
    what the bootstrap target needs. `hint` is the heuristic's recommended
    action index (``H(s, a) = eta`` for ``a == hint``, else 0); ``-1`` means
    the heuristic recommends nothing.
    """

    obs: Array
    mask: Array
    hint: Array
    reward: Array
    terminated: Array
    truncated: Array
    next_obs: Array
    next_mask: Array
    next_hint: Array
    metrics: dict[str, Array]


class EnvSpec(NamedTuple):
    """A single (unbatched) functional environment; callers `vmap` it.

    reset(key) -> (state, obs, mask, hint)
    step(key, state, action) -> (state, Timestep)   # auto-resets on done
    """

    num_actions: int
    obs_dim: int
    reset: Callable[[Array], tuple[Any, Array, Array, Array]]
    step: Callable[[Array, Any, Array], tuple[Any, Timestep]]
