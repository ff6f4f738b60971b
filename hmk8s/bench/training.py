"""Training throughput: the Anakin loop against a host-stepped DQN on the same task.

The host loop is the usual CleanRL ``dqn_jax`` shape: a gymnasium env stepped from
Python, a jitted greedy action, a numpy replay buffer and a jitted update every
``1 / updates_per_step`` env steps. Both sides use the same network, optimiser,
batch size, update-to-data ratio and `dqn.make_update`, so the ratio measures
what running everything on device buys.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from hmk8s.agents import dqn
from hmk8s.agents.config import AgentConfig
from hmk8s.agents.parts import make_agent_parts
from hmk8s.agents.replay import Transition
from hmk8s.envs.spec import EnvSpec
from hmk8s.train.anakin.loop import init_seeds, make_chunk_fn, make_trainer


def anakin_throughput(
    spec: EnvSpec,
    agent: AgentConfig,
    num_envs: int,
    steps: int,
    repeats: int = 2,
    devices: int = 1,
) -> dict[str, float]:
    """Env steps/s and updates/s of one seed's compiled chunk of about ``steps`` env steps
    (best of ``repeats`` after a warm-up chunk; compilation excluded), data-parallel over
    ``devices`` (an update is then one step of every device)."""
    trainer = make_trainer(spec, agent, num_envs, devices=devices)
    iters = max(1, steps // trainer.env_steps_per_iter)
    state = init_seeds(trainer, 0, 1)
    chunk = make_chunk_fn(trainer, iters).lower(state).compile()
    state, metrics = chunk(state)  # warm-up: fills the replay past learning_starts
    best, updates = float("inf"), 0
    for _ in range(repeats):
        before = int(np.asarray(metrics["updates"])[0])
        start = time.perf_counter()
        state, metrics = chunk(state)
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        if seconds < best:
            best, updates = seconds, int(np.asarray(metrics["updates"])[0]) - before
    env_steps = iters * trainer.env_steps_per_iter
    return {"env_steps_per_second": env_steps / best, "updates_per_second": updates / best}


def host_loop_throughput(
    env: gym.Env, agent: AgentConfig, steps: int, warmup: int = 1_000, seed: int = 0
) -> dict[str, float]:
    """Env steps/s and updates/s of a Python-stepped DQN over ``steps`` steps after ``warmup``
    (which fills the buffer past the batch size and compiles the jitted calls)."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    num_actions = int(env.action_space.n)
    all_valid = np.ones(num_actions, bool)
    mask = np.asarray(info.get("action_mask", all_valid), bool)
    parts = make_agent_parts(agent, num_actions)
    network = parts.network
    params = network.init(jax.random.PRNGKey(seed), jnp.asarray(obs, jnp.float32))
    learner = dqn.LearnerState(
        params, params, parts.optimizer.init(params), jnp.zeros((), jnp.int32)
    )
    update = jax.jit(parts.update)
    act = jax.jit(lambda p, o, m: dqn.masked_argmax(network.apply(p, o), m))
    # the schedule's values on the host, so no step pays for an eager device call
    horizon = min(agent.epsilon.steps, warmup + steps)
    eps_table = np.asarray(parts.epsilon(np.arange(horizon + 1)))

    cap = agent.buffer_size
    store: dict[str, np.ndarray] = {
        "obs": np.zeros((cap, obs.size), np.float32),
        "action": np.zeros(cap, np.int32),
        "reward": np.zeros(cap, np.float32),
        "terminated": np.zeros(cap, bool),
        "next_obs": np.zeros((cap, obs.size), np.float32),
        "next_mask": np.ones((cap, num_actions), bool),
    }
    every = max(1, round(1.0 / agent.updates_per_step))
    per_update_step = max(1, round(agent.updates_per_step))
    start, updates = 0.0, 0
    for t in range(warmup + steps):
        if t == warmup:
            jax.block_until_ready(learner)
            start, updates = time.perf_counter(), 0
        if rng.random() < eps_table[min(t, len(eps_table) - 1)]:
            action = int(rng.choice(np.flatnonzero(mask)))
        else:
            action = int(act(learner.params, jnp.asarray(obs, jnp.float32), mask))
        next_obs, reward, terminated, truncated, info = env.step(action)
        next_mask = np.asarray(info.get("action_mask", all_valid), bool)
        i = t % cap
        for key, value in (
            ("obs", obs),
            ("action", action),
            ("reward", reward),
            ("terminated", terminated),
            ("next_obs", next_obs),
            ("next_mask", next_mask),
        ):
            store[key][i] = value
        obs, mask = next_obs, next_mask
        if terminated or truncated:
            obs, info = env.reset()
            mask = np.asarray(info.get("action_mask", all_valid), bool)
        if t + 1 >= agent.batch_size and (t + 1) % every == 0:
            for _ in range(per_update_step):
                idx = rng.integers(0, min(t + 1, cap), agent.batch_size)
                batch = _batch(store, idx)
                learner, _ = update(learner, batch, jnp.float32(0.0))
                updates += 1
    jax.block_until_ready(learner)
    seconds = time.perf_counter() - start
    return {"env_steps_per_second": steps / seconds, "updates_per_second": updates / seconds}


def _batch(store: dict[str, np.ndarray], idx: np.ndarray) -> Transition:
    pick: dict[str, Any] = {k: v[idx] for k, v in store.items()}
    return Transition(
        obs=pick["obs"],
        action=pick["action"],
        reward=pick["reward"],
        terminated=pick["terminated"],
        next_obs=pick["next_obs"],
        next_mask=pick["next_mask"],
        next_hint=np.full(len(idx), -1, np.int32),
    )


def update_seconds(
    agent: AgentConfig,
    obs_dim: int,
    num_actions: int,
    device: jax.Device,
    updates: int = 1_000,
    repeats: int = 3,
) -> float:
    """Seconds per DQN update on ``device``: ``updates`` updates of one fixed random batch in
    one compiled `lax.scan` (best of ``repeats`` after a compiling call), so the figure is the
    update's own cost without replay sampling or dispatch from the host."""
    parts = make_agent_parts(agent, num_actions)
    k_init, k_obs, k_act, k_rew = jax.random.split(jax.random.PRNGKey(0), 4)
    obs = jax.random.normal(k_obs, (agent.batch_size, obs_dim))
    batch = Transition(
        obs=obs,
        action=jax.random.randint(k_act, (agent.batch_size,), 0, num_actions),
        reward=jax.random.normal(k_rew, (agent.batch_size,)),
        terminated=jnp.zeros(agent.batch_size, bool),
        next_obs=obs[::-1],
        next_mask=jnp.ones((agent.batch_size, num_actions), bool),
        next_hint=jnp.full(agent.batch_size, -1, jnp.int32),
    )
    learner = parts.init_learner(k_init, obs[0])
    learner, batch = jax.device_put((learner, batch), device)

    @jax.jit
    def run(learner: dqn.LearnerState) -> dqn.LearnerState:
        def body(learner, _):
            learner, _ = parts.update(learner, batch, jnp.float32(0.0))
            return learner, None

        return jax.lax.scan(body, learner, None, length=updates)[0]

    run(learner)  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(learner))
        best = min(best, time.perf_counter() - start)
    return best / updates
