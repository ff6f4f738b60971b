"""The Anakin loop of PQN: one `lax.scan` of rollouts, each learnt on and then dropped.

One *iteration* steps every env ``agent.pqn.rollout_steps`` times (acting exactly as DQN does,
`make_act`), computes the rollout's lambda-returns with the current network, then takes
``epochs x minibatches`` regression steps over its shuffled transitions. Nothing outlives the
iteration but the weights, the optimiser and the envs: the train state has no replay
(``buffer`` is None) and no target network (``learner.target_params`` is None), so
checkpoints, resume and the evaluation treat it like DQN's.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from hmk8s.agents import dqn
from hmk8s.agents.config import AgentConfig, HaqlConfig
from hmk8s.agents.parts import make_agent_parts
from hmk8s.agents.pqn import lambda_returns, make_regression_step, next_values
from hmk8s.envs.spec import EnvSpec
from hmk8s.train.anakin.trainer import Trainer, fresh_state, make_act, make_iterations
from hmk8s.train.state import TrainState

Array = jax.Array


def make_pqn_trainer(
    spec: EnvSpec,
    agent: AgentConfig,
    num_envs: int,
    haql: HaqlConfig | None = None,
    devices: int = 1,
) -> Trainer:
    """Build PQN's pure init / chunk functions (``haql=None``: no heuristic). One device per
    run: PQN has no data-parallel program."""
    if devices != 1:
        raise ValueError(f"agent.kind=pqn trains on one device; set devices=1 (got {devices})")
    p = agent.pqn
    samples = p.rollout_steps * num_envs
    if samples % p.minibatches:
        raise ValueError(
            f"agent.pqn.minibatches={p.minibatches} does not divide the rollout's "
            f"{samples} transitions (rollout_steps x num_envs)"
        )
    parts = make_agent_parts(agent, spec.num_actions, haql)
    apply_fn, epsilon, xi = parts.network.apply, parts.epsilon, parts.xi
    regress = make_regression_step(apply_fn, parts.optimizer)
    act = make_act(spec, apply_fn, epsilon, parts.bonus, parts.learning_reward, num_envs)
    updates_per_iter = p.epochs * p.minibatches

    def init(key: Array) -> TrainState:
        k_net, k_env, k_run = jax.random.split(key, 3)
        reset = jax.vmap(spec.reset)(jax.random.split(k_env, num_envs))
        params = parts.network.init(k_net, reset[1][0])
        learner = dqn.LearnerState(
            params, None, parts.optimizer.init(params), jnp.zeros((), jnp.int32)
        )
        return fresh_state(learner, None, reset, k_run)

    def rollout_step(state: TrainState, _: None) -> tuple[TrainState, tuple]:
        state, transition, done, finished, metrics = act(state)
        return state, (transition, done, finished, metrics)

    def iteration(state: TrainState, _: None) -> tuple[TrainState, tuple]:
        state, (batch, done, finished, metrics) = jax.lax.scan(
            rollout_step, state, None, length=p.rollout_steps
        )
        q_next = apply_fn(state.learner.params, batch.next_obs)
        bonus = parts.target_bonus(state.env_steps)
        values = next_values(q_next, batch.next_mask, batch.next_hint, bonus)
        returns = lambda_returns(
            batch.reward, batch.terminated, done, values, agent.gamma, p.td_lambda
        )
        flat = (batch.obs.reshape(samples, -1), batch.action.reshape(-1), returns.reshape(-1))

        def epoch(carry: tuple, _: None) -> tuple[tuple, Array]:
            learner, rng = carry
            rng, k_order = jax.random.split(rng)
            order = jax.random.permutation(k_order, samples).reshape(p.minibatches, -1)

            def minibatch(learner: dqn.LearnerState, rows: Array) -> tuple:
                return regress(learner, *(x[rows] for x in flat))

            learner, losses = jax.lax.scan(minibatch, learner, order)
            return (learner, rng), losses.sum()

        (learner, rng), loss_sums = jax.lax.scan(
            epoch, (state.learner, state.rng), None, length=p.epochs
        )
        state = state._replace(learner=learner, rng=rng)
        sums = partial(jax.tree.map, jnp.sum)
        losses = (loss_sums.sum(), jnp.asarray(updates_per_iter, jnp.int32))
        return state, (sums(finished), sums(metrics), losses)

    return Trainer(
        spec=spec,
        network=parts.network,
        agent=agent,
        haql=haql,
        num_envs=num_envs,
        steps_per_iter=p.rollout_steps,
        updates_per_iter=updates_per_iter,
        init=init,
        run=make_iterations(iteration, p.rollout_steps, (epsilon, xi), None),
        epsilon=epsilon,
        xi=xi,
    )
