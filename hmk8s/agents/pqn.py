"""PQN as pure functions: the lambda-return of a rollout and one regression step towards it.

PQN (Gallici et al., "Simplifying Deep Temporal Difference Learning", ICLR 2025) drops the
replay buffer and the target network: many envs step in parallel, each fresh rollout's
lambda-returns are computed with the current network, and a LayerNorm network regresses on
them for a few epochs. HAQL's heuristic enters as in DQN: ``bonus = xi_t * eta`` on the
rulebook's action where the return picks the next action (``argmax [Q + bonus H]``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from hmk8s.agents.dqn import ApplyFn, LearnerState, Params, greedy_action

Array = jax.Array


def next_values(q_next: Array, next_mask: Array, next_hint: Array, bonus: Array | float) -> Array:
    """``Q(s', a*)`` with ``a* = argmax_a [Q(s', a) + bonus H(s', a)]`` over the valid actions:
    the value a return bootstraps on (the one network both selects and evaluates)."""
    a_star = greedy_action(q_next, next_mask, next_hint, bonus)
    return jnp.take_along_axis(q_next, a_star[..., None], axis=-1)[..., 0]


def lambda_returns(
    reward: Array,
    terminated: Array,
    done: Array,
    next_value: Array,
    gamma: float,
    td_lambda: float,
) -> Array:
    """The lambda-return of every step of a rollout (time is the leading axis):

    ``G_t = r_t + gamma (1 - terminated_t) [(1 - lambda) v_t + lambda G_{t+1}]`` while the
    episode goes on, and ``G_t = r_t + gamma (1 - terminated_t) v_t`` where it ends
    (``done_t``: terminated or truncated) and at the rollout's last step, with ``v_t`` the
    value of step t's true successor (`next_values`). A truncated episode bootstraps on its
    last state; a terminated one does not.
    """
    alive = 1.0 - terminated.astype(jnp.float32)
    cut = done.astype(jnp.bool_)

    def back(g_next: Array, step: tuple[Array, ...]) -> tuple[Array, Array]:
        r, a, c, v = step
        g = r + gamma * a * jnp.where(c, v, (1.0 - td_lambda) * v + td_lambda * g_next)
        return g, g

    _, returns = jax.lax.scan(
        back, next_value[-1], (reward.astype(jnp.float32), alive, cut, next_value), reverse=True
    )
    return returns


def make_regression_step(
    apply_fn: ApplyFn, optimizer: optax.GradientTransformation
) -> Callable[[LearnerState, Array, Array, Array], tuple[LearnerState, Array]]:
    """Build ``step(learner, obs, action, returns) -> (learner, loss)``: one optimiser step on
    ``mean 0.5 (Q(s, a) - G)^2`` (PQN keeps no target network: ``learner.target_params`` is
    None and stays so)."""

    def loss_fn(params: Params, obs: Array, action: Array, returns: Array) -> Array:
        q = apply_fn(params, obs)
        q_taken = jnp.take_along_axis(q, action[..., None], axis=-1)[..., 0]
        return 0.5 * jnp.mean(jnp.square(q_taken - jax.lax.stop_gradient(returns)))

    def step(
        learner: LearnerState, obs: Array, action: Array, returns: Array
    ) -> tuple[LearnerState, Array]:
        loss, grads = jax.value_and_grad(loss_fn)(learner.params, obs, action, returns)
        update, opt_state = optimizer.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, update)
        return LearnerState(params, None, opt_state, learner.updates + 1), loss

    return step
