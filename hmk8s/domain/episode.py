"""The episode protocol every backend follows: reset before step, and gymnax's auto-reset."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from gymnasium.error import ResetNeeded


def check_steppable(started: bool, ended: bool) -> None:
    """Gymnasium's order, enforced: `reset()` before the first `step()` and again once an
    episode has ended. Stepping on would run a finished episode with `truncated` stuck at True,
    which a training loop would record as transitions of no episode at all."""
    if not started:
        raise ResetNeeded("call reset() before step()")
    if ended:
        raise ResetNeeded("the episode has ended (terminated or truncated): call reset() first")


def auto_reset(done: jax.Array, fresh: Any, current: Any) -> Any:
    """``fresh`` where the episode ended, else ``current`` (two pytrees of one structure): the
    one auto-reset rule, shared by `ClusterEnv.step` and the trainer's env spec."""
    return jax.tree.map(lambda x, y: jnp.where(done, x, y), fresh, current)
