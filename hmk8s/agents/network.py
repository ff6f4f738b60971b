"""The Q-network: an MLP from an encoded observation to one value per action.

Flax linen keeps the parameters a plain pytree, so they vmap over seeds,
scan through the training loop and checkpoint with orbax unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class QNetwork(nn.Module):
    """MLP ``obs -> Q(obs, .)`` with ReLU hidden layers of the given widths; ``layer_norm``
    normalises each hidden layer before its ReLU (what lets PQN learn without a target
    network)."""

    hidden: Sequence[int]
    num_actions: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = obs.astype(jax.numpy.float32)
        for width in self.hidden:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
        return nn.Dense(self.num_actions)(x)
