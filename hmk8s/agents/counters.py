"""Step counters that stay meaningful past the range of int32.

The train state counts env steps in int32 (JAX's default integer). At 2**31 - 1 a plain ``+``
wraps to -2**31, and everything read from the count goes back to the start: a schedule at a
negative count returns its start value (epsilon 1.0 again, the heuristic's weight xi back to
its start) and ``env_steps >= learning_starts`` turns false, so learning stops. On an
accelerator at a million env steps per second that is 36 minutes into a run.

Holding the count at ``INT32_MAX`` instead keeps every schedule at its end value, as for any
count past its horizon; a count there reads "at least 2**31 - 1".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = int(np.iinfo(np.int32).max)


def saturating_add(counter: jax.Array, amount: int | jax.Array) -> jax.Array:
    """``counter + amount`` for an int32 count and an ``amount >= 0``, held at `INT32_MAX`
    instead of wrapping to negative counts."""
    counter = jnp.asarray(counter, jnp.int32)
    return jnp.where(amount > INT32_MAX - counter, INT32_MAX, counter + amount).astype(jnp.int32)
