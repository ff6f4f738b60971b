"""Checkpoints: bit-exact resume (also after kill -9), refusals with clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnax
import jax
import numpy as np
import pytest

from hmk8s.agents.config import AgentConfig, PqnConfig
from hmk8s.envs.gymnax_spec import gymnax_env_spec
from hmk8s.train.anakin.loop import init_seeds, make_chunk_fn, make_trainer
from hmk8s.train.anakin.run import run_training
from hmk8s.train.checkpoint import Checkpointer, CheckpointError, CheckpointWarning
from hmk8s.train.config import TrainConfig, resolve
from hmk8s.train.run import RunDirError
from hmk8s.train.runlog import params_sha256

AGENT = AgentConfig(
    hidden=[16], batch_size=16, buffer_size=2_000, learning_starts=200, lr_decay_updates=0
)
PER_AGENT = dataclasses.replace(AGENT, priority_exponent=0.6, priority_beta=0.4)
PQN_AGENT = dataclasses.replace(
    AGENT, kind="pqn", layer_norm=True, pqn=PqnConfig(rollout_steps=8, minibatches=4)
)
TESTS = str(Path(__file__).resolve().parent)
#: `train` in a process of its own (the one the tests kill): run_dir, total_steps, resume or "".
DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_checkpoint import train
train(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] or None)
"""


def config(
    total_steps: int, resume: Path | None = None, agent: AgentConfig = AGENT, **changes
) -> TrainConfig:
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
    cfg = config(total_steps, resume, agent)
    spec = gymnax_env_spec(*gymnax.make("CartPole-v1"))
    return run_training(resolve(cfg, "cartpole"), spec, run_dir)


def run_driver(run_dir: Path, total_steps: int, resume: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(run_dir), str(total_steps), resume, TESTS],
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


def test_stopped_and_resumed_prioritised_run_ends_bit_identical(tmp_path):
    uninterrupted = train(tmp_path / "full", 800, agent=PER_AGENT)
    train(tmp_path / "cut", 400, agent=PER_AGENT)  # stops after 1 of the 2 chunks
    resumed = train(tmp_path / "cut", 800, resume=tmp_path / "cut", agent=PER_AGENT)
    assert resumed["updates"] == uninterrupted["updates"] > 0
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]


def test_stopped_and_resumed_pqn_run_ends_bit_identical(tmp_path):
    """PQN's state has no replay and no target network: its checkpoints hold neither, and a
    resumed run still ends on the uninterrupted run's weights."""
    uninterrupted = train(tmp_path / "full", 800, agent=PQN_AGENT)
    train(tmp_path / "cut", 400, agent=PQN_AGENT)  # 13 of the 25 rollouts of 8 x 4 envs
    saved = sorted((tmp_path / "cut" / "checkpoints").glob("[0-9]*/*"))
    assert saved and not [p for p in saved if p.name == "replay"]
    resumed = train(tmp_path / "cut", 800, resume=tmp_path / "cut", agent=PQN_AGENT)
    assert resumed["updates"] == uninterrupted["updates"] == 25 * 4 * 4
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]


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
        run_training(resolve(cfg, "cartpole"), spec, run_dir)


def test_fresh_run_refuses_a_directory_with_checkpoints(full_run):
    with pytest.raises(RunDirError, match="already holds a run"):
        train(full_run[0], 400)


@pytest.fixture(scope="module")
def wide_cartpole():
    """A trainer whose first layer (4 x 128 floats, 2 KiB) is big enough for orbax to keep it in a
    data file of its own, uncompressed (arrays up to 1 KiB sit inside the compressed index,
    whose damage orbax does notice)."""
    agent = dataclasses.replace(AGENT, hidden=[128])
    return make_trainer(gymnax_env_spec(*gymnax.make("CartPole-v1")), agent, num_envs=4)


@pytest.fixture(scope="module")
def saved_steps(tmp_path_factory, wide_cartpole) -> tuple[Path, dict]:
    """Checkpoints at steps 4, 8 and 12 of three different states, saved once per module."""
    directory = tmp_path_factory.mktemp("steps") / "ck"
    seeds = init_seeds(wide_cartpole, 0, 3)  # one seed per step, so each step's state differs
    states = {
        step: jax.tree.map(lambda x, i=i: x[i : i + 1], seeds) for i, step in enumerate((4, 8, 12))
    }
    ckpt = Checkpointer(directory, keep=3)
    for step, state in states.items():
        ckpt.save(step, state, {"seed": step}, {"env_steps": step})
    ckpt.close()
    return directory, states


@pytest.fixture
def three_steps(tmp_path, saved_steps):
    """A fresh copy of `saved_steps` to damage; (checkpointer, states)."""
    directory, states = saved_steps
    shutil.copytree(directory, tmp_path / "ck")
    ckpt = Checkpointer(tmp_path / "ck", keep=3)
    yield ckpt, states
    ckpt.close()


def _data_files(ckpt: Checkpointer, step: int) -> list[Path]:
    """A step's state data files (OCDBT under ocdbt.process_0/d)."""
    return sorted((ckpt.directory / str(step) / "state" / "ocdbt.process_0" / "d").iterdir())


def _changed(ckpt: Checkpointer, step: int, other: int) -> None:
    """Step ``step``'s arrays replaced by the (readable) arrays of step ``other``: the files
    read without error but hold other values, as flipped bits would; only the checksum saved
    with the step can tell."""
    state = ckpt.directory / str(step) / "state"
    shutil.rmtree(state)
    shutil.copytree(ckpt.directory / str(other) / "state", state)


def _truncate(ckpt: Checkpointer, step: int, other: int) -> None:
    """Cut every data file of the step in half, as a crash mid-copy would."""
    del other
    for path in _data_files(ckpt, step):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _assert_same(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_changed, "the state arrays differ from the sha256 saved with them"),
        (_truncate, "unreadable arrays"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(three_steps, damage, reason):
    ckpt, states = three_steps
    damage(ckpt, 12, 4)
    with pytest.warns(CheckpointWarning) as caught:
        restored, config, meta = ckpt.restore(states[4])
    (message,) = [str(w.message) for w in caught]
    assert f"step 12 is damaged ({reason}" in message
    assert "resuming from step 8, the newest intact checkpoint" in message
    assert config == {"seed": 8} and meta["env_steps"] == 8
    _assert_same(restored, states[8])
    # the damaged step is moved aside, so the resumed run saves step 12 anew
    (aside,) = ckpt.directory.glob("12.damaged-*")
    assert aside.name in message
    assert ckpt.latest_step() == 8
    ckpt.save(12, states[12], {"seed": 12}, {"env_steps": 12})
    reopened = Checkpointer(ckpt.directory, keep=3)  # orbax neither lists nor cleans it up
    again, config, _ = reopened.restore(states[4], step=12)
    reopened.close()
    assert config == {"seed": 12}
    _assert_same(again, states[12])
    assert aside.is_dir()


def test_unreadable_metadata_falls_back_too(three_steps):
    ckpt, states = three_steps
    (ckpt.directory / "12" / "meta" / "metadata").write_text('{"format": "hmk8s-tr')
    with pytest.warns(CheckpointWarning, match="step 12 is damaged .no readable config/meta"):
        step, config, _ = ckpt.read_config()
    assert (step, config) == (8, {"seed": 8})
    with pytest.raises(CheckpointError, match="step 8 not saved, the directory holds step 8"):
        ckpt.save(8, states[8], {}, {})  # orbax alone would skip it without a word


def test_no_intact_checkpoint_is_a_clear_error(three_steps):
    ckpt, states = three_steps
    for step, other in ((4, 8), (8, 12), (12, 4)):
        _changed(ckpt, step, other)
    with pytest.raises(CheckpointError) as err:
        ckpt.restore(states[12])
    msg = str(err.value)
    assert "no intact checkpoint left" in msg
    assert all(f"step {s} is damaged (the state arrays differ" in msg for s in (4, 8, 12))
    assert sorted(p.name for p in ckpt.directory.iterdir()) == ["12", "4", "8"]  # left as found


def test_foreign_or_other_shaped_checkpoints_are_refused_not_skipped(tmp_path, three_steps):
    ckpt, _ = three_steps
    narrow = make_trainer(gymnax_env_spec(*gymnax.make("CartPole-v1")), AGENT, num_envs=4)
    like = jax.eval_shape(lambda: init_seeds(narrow, 0, 1))  # hidden [16]; [128] was saved
    with pytest.raises(CheckpointError) as err:
        ckpt.restore(like)
    assert "cannot restore step 12 into this trainer's state" in str(err.value)
    assert "['Dense_0']['bias']: saved float32[1, 128], here float32[1, 16]" in str(err.value)
    (ckpt.directory / "12" / "meta" / "metadata").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="step 12 is not an hmk8s train checkpoint"):
        ckpt.read_config()
    empty = Checkpointer(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        empty.restore(like)
    empty.close()


def test_a_version_1_checkpoint_is_restored_unverified(three_steps):
    ckpt, states = three_steps
    meta_file = ckpt.directory / "12" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({"format": meta["format"], "version": 1, "env_steps": 12}))
    with pytest.warns(CheckpointWarning, match="step 12 has format version 1.*unverified"):
        restored, _, _ = ckpt.restore(states[4])
    _assert_same(restored, states[12])


def test_params_digest_tracks_every_bit():
    a = {"w": np.zeros(3, np.float32)}
    b = {"w": np.array([0.0, 0.0, np.float32(1e-45)], np.float32)}
    assert params_sha256(a) == params_sha256({"w": np.zeros(3, np.float32)})
    assert params_sha256(a) != params_sha256(b)
