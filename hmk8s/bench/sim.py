"""Throughput measurements shared by the benchmark scripts (the timing shell, not the core)."""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import jax
import numpy as np

from hmk8s import sim


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls of `fn` (after one warm-up call that compiles)."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def sim_steps_per_second(usecase: str, num_envs: int, steps: int, repeats: int = 3) -> float:
    """Env steps/s of `num_envs` vmapped simulators under one jitted `lax.scan` of `steps` steps,
    each env taking uniformly random actions (invalid ones act as no-ops; auto-reset included)."""
    env, params = sim.make(usecase)
    num_actions = params.layout.num_actions

    def one_env(key: jax.Array) -> jax.Array:
        k_reset, k_run = jax.random.split(key)
        obs, state = env.reset(k_reset, params)

        def body(carry, key):
            obs, state, total = carry
            k_act, k_step = jax.random.split(key)
            action = jax.random.randint(k_act, (), 0, num_actions)
            obs, state, reward, _, _, _ = env.step(k_step, state, action, params)
            return (obs, state, total + reward), None

        (_, _, total), _ = jax.lax.scan(body, (obs, state, 0.0), jax.random.split(k_run, steps))
        return total

    run = jax.jit(jax.vmap(one_env))
    keys = jax.random.split(jax.random.PRNGKey(0), num_envs)
    return num_envs * steps / _timed(lambda: run(keys), repeats)


def gym_steps_per_second(env_id: str, steps: int) -> float:
    """Env steps/s of one gymnasium env stepped from a Python loop with random actions."""
    env = gym.make(env_id)
    rng = np.random.default_rng(0)
    num_actions = int(env.action_space.n)
    env.reset(seed=0)
    env.step(0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(num_actions)))
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def device_name() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{getattr(device, 'device_kind', device)}"


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


__all__ = ["device_name", "gym_steps_per_second", "int_list", "sim_steps_per_second"]
