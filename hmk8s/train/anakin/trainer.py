"""What every Anakin learner shares: the `Trainer` it is built into, the acting step and the
chunk's metrics, so DQN (`hmk8s.train.anakin.loop`) and PQN (`hmk8s.train.anakin.pqn_loop`)
act, count episodes and report identically."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hmk8s.agents import dqn
from hmk8s.agents.config import AgentConfig, HaqlConfig
from hmk8s.agents.counters import saturating_add
from hmk8s.agents.network import QNetwork
from hmk8s.agents.replay import Transition
from hmk8s.envs.spec import EnvSpec
from hmk8s.train.anakin.mesh import SEED_AXIS
from hmk8s.train.state import TrainState

Array = jax.Array
Metrics = dict[str, Array]
#: name of the `jax.vmap` axis over seeds that `Trainer.run` runs under (`make_chunk_fn`)
SEEDS = "seeds"
#: one env step: (state, the transition, whether each env's episode ended, (sum of the
#: returns of the episodes that ended, how many ended), the env's metrics averaged over envs)
Acted = tuple[TrainState, Transition, Array, tuple[Array, Array], Metrics]


@dataclass(frozen=True)
class Trainer:
    """A learner (DQN or PQN, either with HAQL's heuristic) bound to one environment; functions
    are unbatched (one seed), and `run` runs under a `jax.vmap` over seeds named `SEEDS`
    (`make_chunk_fn`).

    ``mesh`` is None on one device; otherwise `init` and `run` are the per-device programs
    of a run over its ``seed`` and ``data`` axes (call them through `init_seeds` and
    `make_chunk_fn`).
    """

    spec: EnvSpec
    network: QNetwork
    agent: AgentConfig
    haql: HaqlConfig | None
    num_envs: int
    steps_per_iter: int
    updates_per_iter: int
    init: Callable[[Array], TrainState]
    run: Callable[[TrainState, int], tuple[TrainState, Metrics]]
    epsilon: Callable[[Array], Array]
    xi: Callable[[Array], Array]
    mesh: Mesh | None = None

    @property
    def seed_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[SEED_AXIS]

    @property
    def env_steps_per_iter(self) -> int:
        return self.steps_per_iter * self.num_envs


def reductions(axis: str | None) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
    """(sum, mean) of a per-device metric over the devices; both the identity on one device."""
    if axis is None:
        return (lambda x: x), (lambda x: x)
    return partial(jax.lax.psum, axis_name=axis), partial(jax.lax.pmean, axis_name=axis)


def fresh_state(learner: Any, buffer: Any, reset: tuple, rng: Array) -> TrainState:
    """The train state before the first step: ``reset`` is the vmapped env reset's
    ``(env_state, obs, mask, hint)``, every running return 0 and no env step taken."""
    env_state, obs, mask, hint = reset
    return TrainState(
        learner=learner,
        buffer=buffer,
        env_state=env_state,
        obs=obs,
        mask=mask,
        hint=hint,
        episode_return=jnp.zeros(obs.shape[:1], jnp.float32),
        env_steps=jnp.zeros((), jnp.int32),
        rng=rng,
    )


def make_act(
    spec: EnvSpec,
    apply_fn: Callable[[Any, Array], Array],
    epsilon: optax.Schedule,
    bonus: Callable[[Array], Any],
    learning_reward: Callable[[Array, Array | None], Array],
    num_envs: int,
) -> Callable[[TrainState], Acted]:
    """``act(state)``: every env of ``state`` takes an epsilon-greedy step over
    ``argmax [Q + bonus(env_steps) H]`` (`Acted`); ``num_envs`` is the run's count over all
    devices, what ``env_steps`` advances by."""
    v_step = jax.vmap(spec.step)

    def act(state: TrainState) -> Acted:
        rng, k_act, k_env = jax.random.split(state.rng, 3)
        q = apply_fn(state.learner.params, state.obs)
        action = dqn.epsilon_greedy(
            k_act, q, state.mask, state.hint, epsilon(state.env_steps), bonus(state.env_steps)
        ).astype(jnp.int32)
        keys = jax.random.split(k_env, action.shape[0])
        env_state, ts = v_step(keys, state.env_state, action)
        reward = ts.reward.astype(jnp.float32)
        transition = Transition(
            obs=state.obs,
            action=action,
            reward=learning_reward(reward, ts.metrics.get("sla_violated")),
            terminated=ts.terminated.astype(jnp.bool_),
            next_obs=ts.next_obs,
            next_mask=ts.next_mask.astype(jnp.bool_),
            next_hint=ts.next_hint.astype(jnp.int32),
        )
        done = ts.terminated | ts.truncated
        returns = state.episode_return + reward
        state = state._replace(
            env_state=env_state,
            obs=ts.obs,
            mask=ts.mask,
            hint=ts.hint,
            episode_return=jnp.where(done, 0.0, returns),
            env_steps=saturating_add(state.env_steps, num_envs),
            rng=rng,
        )
        finished = (jnp.where(done, returns, 0.0).sum(), done.sum())
        metrics = {k: v.astype(jnp.float32).mean() for k, v in ts.metrics.items()}
        return state, transition, done, finished, metrics

    return act


def chunk_metrics(
    state: TrainState,
    finished: tuple[Array, Array],
    step_metrics: Metrics,
    losses: tuple[Array, Array],
    trainer_schedules: tuple[optax.Schedule, optax.Schedule],
    env_steps_run: int,
    axis: str | None,
) -> Metrics:
    """A chunk's log row: counters, mean return of the episodes that ended, mean loss over its
    updates (NaN where none ran), the schedules and the env's metrics per step. ``finished``,
    ``step_metrics`` and ``losses`` (sum, count) are summed over the chunk on this device;
    ``env_steps_run`` is how many vector env steps the chunk took."""
    total, mean = reductions(axis)
    epsilon, xi = trainer_schedules
    (ret_sum, episodes), (loss_sum, n_updates) = finished, losses
    episodes = total(episodes)
    metrics = {
        "env_steps": state.env_steps,
        "updates": state.learner.updates,
        "episodes": episodes,
        "episode_return": jnp.where(episodes > 0, total(ret_sum) / episodes, jnp.nan),
        "loss": jnp.where(n_updates > 0, loss_sum / n_updates, jnp.nan),
        "epsilon": epsilon(state.env_steps),
        "xi": xi(state.env_steps),
    }
    for name, summed in step_metrics.items():
        metrics[f"env/{name}"] = mean(summed) / env_steps_run
    return metrics


#: one iteration: the state after it and what it summed over its env steps: ((sum of the
#: returns of the episodes that ended, how many ended), the env's metrics, (loss sum, updates))
Iteration = Callable[[TrainState, None], tuple[TrainState, tuple]]


def make_iterations(
    iteration: Iteration,
    steps_per_iter: int,
    schedules: tuple[optax.Schedule, optax.Schedule],
    axis: str | None,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """A learner's `Trainer.run` from its ``iteration``: ``run(state, num_iters)`` scans
    ``num_iters`` iterations and reports the chunk's metrics (`chunk_metrics`)."""
    sums = partial(jax.tree.map, jnp.sum)

    def run(state: TrainState, num_iters: int) -> tuple[TrainState, Metrics]:
        state, (finished, step_metrics, losses) = jax.lax.scan(
            iteration, state, None, length=num_iters
        )
        steps = num_iters * steps_per_iter
        return state, chunk_metrics(
            state, sums(finished), sums(step_metrics), sums(losses), schedules, steps, axis
        )

    return run
