"""The checkpoint tests' CartPole run, in a module of its own: the run the tests kill, in a
process of its own, trains through the same `train` as the ones they call in-process."""

from __future__ import annotations

from pathlib import Path

import gymnax

from hmk8s.agents.config import AgentConfig
from hmk8s.envs.gymnax_spec import gymnax_env_spec
from hmk8s.train.anakin.run import run_training
from hmk8s.train.config import TrainConfig, resolve

AGENT = AgentConfig(
    hidden=[16], batch_size=16, buffer_size=2_000, learning_starts=200, lr_decay_updates=0
)


def config(
    total_steps: int, resume: Path | None = None, agent: AgentConfig = AGENT, **changes
) -> TrainConfig:
    """Two seeds of 4 envs in chunks (checkpoints) of 400 steps; no evaluation, progress bar
    or TensorBoard. ``changes`` replace settings."""
    settings = {"num_envs": 4, "chunk_steps": 400, "seeds": 2, **changes}
    cfg = TrainConfig(
        agent=agent,
        total_steps=total_steps,
        resume=None if resume is None else str(resume),
        **settings,
    )
    cfg.eval.enabled = False
    cfg.log.progress = False
    cfg.log.tensorboard = False
    return cfg


def train(
    run_dir: Path, total_steps: int, resume: Path | None = None, agent: AgentConfig = AGENT
) -> dict:
    """`config`'s run on CartPole into ``run_dir`` (resumed from ``resume`` if given)."""
    cfg = config(total_steps, resume, agent)
    spec = gymnax_env_spec(*gymnax.make("CartPole-v1"))
    return run_training(resolve(cfg, "cartpole"), spec, run_dir)
