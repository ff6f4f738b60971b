"""DQN and HAQL as pure functions: action choice, bootstrap target, loss, update.

Everything here is a pure function of arrays so the Anakin loop can `jit`,
`scan` and `vmap` it. HAQL adds the heuristic ``H(s, a) = eta * [a == hint]``
weighted by a decaying ``xi_t``; both enter only as the single scalar
``bonus = xi_t * eta``, so a pure DQN is the same code with ``bonus = 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hmk8s.agents.replay import Transition

Array = jax.Array
Params = Any
ApplyFn = Callable[[Params, Array], Array]


def masked_argmax(values: Array, mask: Array) -> Array:
    """Index of the largest value among the valid actions (last axis)."""
    return jnp.argmax(jnp.where(mask, values, -jnp.inf), axis=-1)


def heuristic_values(hint: Array, num_actions: int, bonus: Array | float) -> Array:
    """``xi_t * H(s, .)``: ``bonus`` on the hinted action, 0 elsewhere (and for hint = -1)."""
    return bonus * jax.nn.one_hot(hint, num_actions, dtype=jnp.float32)


def greedy_action(q: Array, mask: Array, hint: Array, bonus: Array | float = 0.0) -> Array:
    """``argmax_a [Q(s, a) + xi_t H(s, a)]`` over valid actions."""
    return masked_argmax(q + heuristic_values(hint, q.shape[-1], bonus), mask)


def random_valid_action(key: Array, mask: Array) -> Array:
    """A uniformly random action among the valid ones (last axis)."""
    return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf), axis=-1)


def epsilon_greedy(
    key: Array, q: Array, mask: Array, hint: Array, epsilon: Array, bonus: Array | float
) -> Array:
    """Epsilon-greedy over the (heuristically biased) greedy action, batched over rows."""
    k_explore, k_random = jax.random.split(key)
    explore = jax.random.uniform(k_explore, q.shape[:-1]) < epsilon
    return jnp.where(
        explore, random_valid_action(k_random, mask), greedy_action(q, mask, hint, bonus)
    )


def td_target(
    reward: Array,
    terminated: Array,
    q_next_online: Array,
    q_next_target: Array,
    next_mask: Array,
    next_hint: Array,
    gamma: float,
    target_bonus: Array | float,
    double: bool,
) -> Array:
    """Bootstrap target ``r + gamma (1 - terminated) Q_target(s', a*)``.

    Double DQN picks ``a* = argmax_a [Q_online(s', a) + target_bonus * [a == hint']]`` over the
    valid actions and reads its value from the target network; ``target_bonus`` is
    ``xi_t * eta`` for HAQL with ``in_target`` and 0 otherwise. Without ``double`` the
    selection uses the target network itself. Truncated episodes are not terminated, so
    they bootstrap.
    """
    selector = q_next_online if double else q_next_target
    a_star = greedy_action(selector, next_mask, next_hint, target_bonus)
    q_star = jnp.take_along_axis(q_next_target, a_star[..., None], axis=-1)[..., 0]
    return reward + gamma * (1.0 - terminated.astype(jnp.float32)) * q_star


def q_loss(
    params: Params,
    target_params: Params,
    batch: Transition,
    apply_fn: ApplyFn,
    gamma: float,
    target_bonus: Array | float,
    double: bool,
    huber_delta: float,
    weights: Array | None = None,
) -> tuple[Array, Array]:
    """(Mean Huber loss between ``Q(s, a)`` and the stopped-gradient TD target, TD errors).

    ``weights`` (prioritised replay's importance weights) weight each item's loss in the mean;
    ``None`` is the plain mean.
    """
    q = apply_fn(params, batch.obs)
    q_taken = jnp.take_along_axis(q, batch.action[..., None], axis=-1)[..., 0]
    target = jax.lax.stop_gradient(
        td_target(
            batch.reward,
            batch.terminated,
            apply_fn(params, batch.next_obs),
            apply_fn(target_params, batch.next_obs),
            batch.next_mask,
            batch.next_hint,
            gamma,
            target_bonus,
            double,
        )
    )
    losses = optax.huber_loss(q_taken, target, delta=huber_delta)
    loss = losses.mean() if weights is None else (weights * losses).mean()
    return loss, target - q_taken


def make_optimizer(
    learning_rate: float, max_grad_norm: float, decay_updates: int = 0
) -> optax.GradientTransformation:
    """Adam behind global-norm gradient clipping; ``decay_updates > 0`` anneals the rate to 0."""
    rate = (
        optax.linear_schedule(learning_rate, 0.0, decay_updates) if decay_updates else learning_rate
    )
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(rate))


def refresh_target(
    params: Params, target_params: Params, updates: Array, period: int, tau: float
) -> Params:
    """Copy every ``period`` updates when ``tau == 1``, else Polyak-average at rate ``tau``."""
    if tau >= 1.0:
        return optax.periodic_update(params, target_params, updates, period)
    return optax.incremental_update(params, target_params, tau)


def make_schedule(kind: str, start: float, end: float, steps: int) -> optax.Schedule:
    """``start -> end`` over ``steps`` env steps, linearly or exponentially; then constant."""
    if kind == "linear":
        return optax.linear_schedule(start, end, max(steps, 1))
    if kind == "exponential":
        if start <= 0.0 or end <= 0.0:
            raise ValueError("an exponential schedule needs start > 0 and end > 0")
        return optax.exponential_decay(
            start, max(steps, 1), end / start, end_value=end, staircase=False
        )
    raise ValueError(f"unknown schedule kind {kind!r} (linear | exponential)")


class UpdateInfo(NamedTuple):
    """What an update reports: its loss and each item's TD error ``y - Q(s, a)``."""

    loss: Array
    td_error: Array


class LearnerState(NamedTuple):
    """What one gradient update changes."""

    params: Params
    target_params: Params
    opt_state: optax.OptState
    updates: Array


def make_update(
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    gamma: float,
    double: bool,
    huber_delta: float,
    target_period: int,
    target_tau: float,
    axis_name: str | None = None,
) -> Callable[..., tuple[LearnerState, UpdateInfo]]:
    """Build ``update(learner, batch, target_bonus, weights=None) -> (learner, info)``: one SGD
    step on the (importance-weighted, when ``weights`` is given) loss.

    With ``axis_name`` (data parallelism under `jax.shard_map`) the gradients are averaged over
    that mesh axis before the optimiser sees them, so every device applies the same step and
    the parameters stay replicated; ``None`` is the single-device program, unchanged.
    """

    def update(
        learner: LearnerState,
        batch: Transition,
        target_bonus: Array,
        weights: Array | None = None,
    ) -> tuple[LearnerState, UpdateInfo]:
        (loss, td_error), grads = jax.value_and_grad(q_loss, has_aux=True)(
            learner.params,
            learner.target_params,
            batch,
            apply_fn,
            gamma,
            target_bonus,
            double,
            huber_delta,
            weights,
        )
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        step, opt_state = optimizer.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, step)
        updates = learner.updates + 1
        target = refresh_target(params, learner.target_params, updates, target_period, target_tau)
        return LearnerState(params, target, opt_state, updates), UpdateInfo(loss, td_error)

    return update
