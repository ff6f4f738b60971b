"""The asynchronous actor over a `KubernetesClusterEnv` on emulated clusters that answer a
share of the API calls with faults: the run completes every step, each written once, with the
rulebook's hints read from the env's structured observation."""

from __future__ import annotations

from contextlib import ExitStack

import jax
import numpy as np
from async_envs import small_agent, written

from hmk8s.k8s.emulated.harness import emulation
from hmk8s.train.actor_learner.core import make_async_fns
from hmk8s.train.actor_learner.k8s_run import close_envs, heuristic_hint
from hmk8s.train.actor_learner.loop import AsyncSettings, train_async

FAST_BACKEND = {
    "poll_interval_s": 0.02,
    "step_seconds": 0.01,
    "api": {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "retry_after_max_s": 0.05},
}


def test_api_faults_do_not_stall_the_actor():
    env_cfg = {"start": "minimal", "episode_steps": 4}
    with ExitStack() as stack:
        emus = [
            stack.enter_context(
                emulation(
                    "ml",
                    env_cfg,
                    backend=FAST_BACKEND,
                    fault_rate=0.3,
                    fault_kinds=("500", "429", "409"),
                    retry_after="0",
                    seed=i,
                )
            )
            for i in range(1)
        ]
        envs = [emu.make_env() for emu in emus]
        try:
            fns = make_async_fns(envs[0].action_space.n, small_agent(), len(envs))
            obs_dim = envs[0].observation_space.shape[0]
            state = fns.init(jax.random.PRNGKey(0), np.zeros((obs_dim,), np.float32))
            settings = AsyncSettings(
                total_steps=10, ratio=1.0, max_seconds=40.0, failure_backoff_s=0.01
            )
            result = train_async(fns, envs, heuristic_hint, state, settings)
        finally:
            assert close_envs(envs, timeout_s=20.0) == []
        assert sum(sum(e.clusters.emulator.faults.values()) for e in emus) > 0, "no fault injected"
        for emu in emus:
            assert emu.clusters.objects("apps/v1/deployments") == [], "objects deleted"
    assert result.error is None and not result.abandoned
    assert result.env_steps == 10, "the actor stalled on faulty clusters"
    replay = written(result.state.buffer)
    assert len(replay.obs) == 10 and sum(result.env_steps_per_env) == 10
    assert replay.next_mask[np.arange(10), replay.next_hint].all(), "hints are valid actions"
