"""Checkpoints: bit-exact resume (also after kill -9), refusals with clear errors."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnax
import jax
import numpy as np
import pytest

from hmk8s.agents.config import AgentConfig
from hmk8s.envs.gymnax_spec import gymnax_env_spec
from hmk8s.train.anakin.loop import init_seeds, make_chunk_fn, make_trainer
from hmk8s.train.anakin.run import run_training
from hmk8s.train.checkpoint import Checkpointer, CheckpointError
from hmk8s.train.config import TrainConfig
from hmk8s.train.run import RunDirError
from hmk8s.train.runlog import params_sha256

AGENT = AgentConfig(hidden=[16], batch_size=16, buffer_size=2_000, learning_starts=200)
DRIVER = """
import dataclasses, sys
from pathlib import Path
import gymnax
from hmk8s.agents.config import AgentConfig
from hmk8s.train.config import TrainConfig
from hmk8s.envs.gymnax_spec import gymnax_env_spec
from hmk8s.train.anakin.run import run_training
cfg = TrainConfig(
    agent=AgentConfig(hidden=[16], batch_size=16, buffer_size=2_000, learning_starts=200),
    total_steps=int(sys.argv[2]), num_envs=4, chunk_steps=400, seeds=2, resume=sys.argv[3] or None,
)
cfg.eval.enabled = False
cfg.log.progress = False
cfg.log.tensorboard = False
spec = gymnax_env_spec(*gymnax.make("CartPole-v1"))
run_training(cfg, spec, dataclasses.asdict(cfg), Path(sys.argv[1]), name="cartpole")
"""


def config(total_steps: int, resume: Path | None = None, **changes) -> TrainConfig:
    settings = {"num_envs": 4, "chunk_steps": 400, "seeds": 2, **changes}
    cfg = TrainConfig(
        agent=AGENT,
        total_steps=total_steps,
        resume=None if resume is None else str(resume),
        **settings,
    )
    cfg.eval.enabled = False
    cfg.log.progress = False
    cfg.log.tensorboard = False
    return cfg


def train(run_dir: Path, total_steps: int, resume: Path | None = None) -> dict:
    cfg = config(total_steps, resume)
    spec = gymnax_env_spec(*gymnax.make("CartPole-v1"))
    return run_training(cfg, spec, dataclasses.asdict(cfg), run_dir, name="cartpole")


def run_driver(run_dir: Path, total_steps: int, resume: str = "") -> subprocess.Popen:
    code = textwrap.dedent(DRIVER)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir), str(total_steps), resume],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("full")
    return run_dir, train(run_dir, 4_000)


@pytest.fixture(scope="module")
def uninterrupted(full_run) -> dict:
    return full_run[1]


def test_save_restore_round_trip_is_bitwise(tmp_path):
    trainer = make_trainer(gymnax_env_spec(*gymnax.make("CartPole-v1")), AGENT, num_envs=4)
    state, _ = make_chunk_fn(trainer, 100)(init_seeds(trainer, 0, 2))
    ckpt = Checkpointer(tmp_path / "ck", keep=2)
    ckpt.save(400, state, {"a": 1}, {"note": "x"})
    restored, cfg, meta = ckpt.restore(init_seeds(trainer, 9, 2))
    ckpt.close()
    assert cfg == {"a": 1} and meta["note"] == "x"
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stopped_and_resumed_run_ends_bit_identical(tmp_path, uninterrupted):
    first = train(tmp_path, 1_600)  # stops after 4 of the 10 chunks
    assert first["params_sha256"] != uninterrupted["params_sha256"]
    resumed = train(tmp_path, 4_000, resume=tmp_path)  # total_steps is a resume-safe key
    assert resumed["env_steps"] == uninterrupted["env_steps"] == 4_000
    assert resumed["updates"] == uninterrupted["updates"]
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 10 * 2  # header, then one row per chunk and seed, none twice


def test_killed_run_resumes_bit_identical(tmp_path, uninterrupted):
    proc = run_driver(tmp_path, 400_000)  # far longer than the test waits
    ckpts = tmp_path / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # a save that was cut short leaves a temporary directory, which a resume ignores
    (ckpts / f"999999.orbax-checkpoint-tmp-{time.time_ns()}" / "state").mkdir(parents=True)
    last = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert 0 < last < 4_000
    resumed = train(tmp_path, 4_000, resume=tmp_path)
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]


def test_resume_refuses_a_changed_config(full_run):
    run_dir, _ = full_run
    cfg = config(8_000, run_dir, num_envs=8)
    spec = gymnax_env_spec(*gymnax.make("CartPole-v1"))
    with pytest.raises(CheckpointError, match="num_envs: checkpoint has 4, now 8"):
        run_training(cfg, spec, dataclasses.asdict(cfg), run_dir, name="cartpole")


def test_fresh_run_refuses_a_directory_with_checkpoints(full_run):
    with pytest.raises(RunDirError, match="already holds a run"):
        train(full_run[0], 400)


def test_foreign_and_corrupt_checkpoints_are_refused(tmp_path):
    trainer = make_trainer(gymnax_env_spec(*gymnax.make("CartPole-v1")), AGENT, num_envs=4)
    fresh = init_seeds(trainer, 0, 1)
    empty = Checkpointer(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        empty.restore(fresh)
    empty.close()

    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(4, fresh, {}, {})
    (tmp_path / "ck" / "4" / "meta" / "metadata").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="not an hmk8s train checkpoint"):
        ckpt.restore(fresh)
    ckpt.save(8, fresh, {}, {})
    for f in (tmp_path / "ck" / "8" / "state").rglob("*"):
        if f.is_file() and "manifest" in f.name:
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot restore step 8"):
        ckpt.restore(fresh)
    other = make_trainer(
        gymnax_env_spec(*gymnax.make("CartPole-v1")),
        dataclasses.replace(AGENT, hidden=[32]),
        num_envs=4,
    )
    ckpt.save(12, fresh, {}, {})
    with pytest.raises(CheckpointError, match="cannot restore step 12"):
        ckpt.restore(init_seeds(other, 0, 1), step=12)
    ckpt.close()


def test_params_digest_tracks_every_bit():
    a = {"w": np.zeros(3, np.float32)}
    b = {"w": np.array([0.0, 0.0, np.float32(1e-45)], np.float32)}
    assert params_sha256(a) == params_sha256({"w": np.zeros(3, np.float32)})
    assert params_sha256(a) != params_sha256(b)
