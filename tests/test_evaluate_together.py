"""The evaluation trains DQN and HAQL at the same time: truly at once, and to the same numbers."""

from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest
from tiny import tiny_config

from hmk8s import sim
from hmk8s.agents.config import HaqlConfig
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.evaluate.experiment import (
    AGENTS,
    EvaluateConfig,
    obtain_agents,
    train_in_process,
)
from hmk8s.train.anakin.loop import make_trainer

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_agents_trained_together_match_agents_trained_alone():
    env, params = sim.make("ml", {"episode_steps": 16, "start": "minimal"})
    spec = sim_env_spec(env, params, "onehot")
    cfg = tiny_config(
        usecase="ml",
        backend="sim",
        agent={"updates_per_step": 0.25, "lr_decay_updates": 0},
        seeds=2,
        total_steps=512,
    )
    agent = cfg.agent
    haql = {"dqn": None, "haql": HaqlConfig()}
    trainers = {name: make_trainer(spec, agent, cfg.num_envs, haql[name]) for name in AGENTS}
    # the curve: the sum of each seed's weights, which any difference in training would move
    curves = {
        name: lambda p, steps: np.array(
            [float(sum(x[i].sum() for x in jax.tree.leaves(p))) for i in range(cfg.seeds)]
        )
        for name in AGENTS
    }
    source = train_in_process("ml", cfg, EvaluateConfig(curve_points=2), log=lambda _: None)
    # DQN alone, then DQN and HAQL at once (each compile costs about 20 s, so HAQL is not also
    # trained alone: what could differ is the concurrency, not the agent)
    alone = obtain_agents(source, {"dqn": trainers["dqn"]}, curves, together=False)["dqn"]
    together = obtain_agents(source, trainers, curves, together=True)
    np.testing.assert_array_equal(together["dqn"].steps, [0, 256, 512])
    np.testing.assert_array_equal(together["dqn"].steps, alone.steps)
    np.testing.assert_array_equal(together["dqn"].curves, alone.curves)
    jax.tree.map(np.testing.assert_array_equal, together["dqn"].params, alone.params)
    # 16 envs x 0.25 = 4 updates after each of 32 iterations, from the 4th on: 29 x 4
    assert together["dqn"].updates == together["haql"].updates == alone.updates == 116
    # HAQL did train, and learns otherwise than DQN
    assert together["haql"].curves.shape == (2, 3)
    assert not np.array_equal(together["dqn"].curves, together["haql"].curves)


def test_together_runs_every_agent_at_once_and_alone_one_after_the_other():
    meeting = threading.Barrier(len(AGENTS), timeout=30)
    order: list[str] = []

    def meets(name: str, trainer: object, curve: object) -> str:
        meeting.wait()  # breaks (and raises) unless every agent is being obtained at once
        return name

    def records(name: str, trainer: object, curve: object) -> str:
        order.append(name)
        return name

    nothing = dict.fromkeys(AGENTS)
    assert obtain_agents(meets, nothing, nothing, together=True) == {n: n for n in AGENTS}
    assert obtain_agents(records, nothing, nothing, together=False) == {n: n for n in AGENTS}
    assert order == list(AGENTS)


def test_a_failing_agent_stops_the_others_at_their_next_curve_point():
    points: list[int] = []

    def source(name: str, trainer: object, curve) -> str:
        if name == "dqn":
            raise FloatingPointError("dqn: NaN loss")
        while True:  # an agent that would train forever unless stopped
            curve(None, len(points))
            points.append(len(points))
            time.sleep(0.001)

    curves = {name: lambda params, steps: np.zeros(1) for name in AGENTS}
    with pytest.raises(FloatingPointError, match="NaN loss"):
        obtain_agents(source, dict.fromkeys(AGENTS), curves, together=True)
    assert not [t for t in threading.enumerate() if t.name.startswith("train-")]
    stopped_at = len(points)
    time.sleep(0.05)
    assert len(points) == stopped_at
