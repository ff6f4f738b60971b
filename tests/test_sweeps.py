"""Sweeps through Hydra's multirun: each job its own run directory under the sweep directory,
run in parallel by the joblib launcher or as jobs by submitit (its local executor here, the
same code path as SLURM's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_runs import run_script

TINY = [
    "total_steps=256",
    "num_envs=8",
    "chunk_steps=128",
    "agent.hidden=[8]",
    "agent.batch_size=8",
    "agent.buffer_size=256",
    "agent.learning_starts=32",
    "log.progress=false",
    "log.tensorboard=false",
    "eval.enabled=false",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One compilation cache: the jobs of every sweep here compile the same program."""
    return tmp_path_factory.mktemp("jax-cache")


def sweep(tmp_path: Path, cache: Path, launcher: str, *extra: str) -> Path:
    sweep_dir = tmp_path / "sweep"
    done = run_script(
        "train.py",
        tmp_path,
        "-m",
        "seed=0,1",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
        *TINY,
        cache=cache,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


def check_jobs(sweep_dir: Path) -> None:
    """Jobs 0 and 1 trained seeds 0 and 1, each in its own directory with its own summary."""
    digests = set()
    for job in (0, 1):
        run_dir = sweep_dir / str(job)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["env_steps"] == 256
        assert f"seed: {job}\n" in (run_dir / "config.yaml").read_text()
        digests.add(summary["params_sha256"])
    assert len(digests) == 2  # two seeds, two different agents


def test_joblib_sweep_gives_each_job_its_run_directory(tmp_path, cache):
    sweep_dir = sweep(tmp_path, cache, "joblib", "hydra.launcher.n_jobs=2")
    check_jobs(sweep_dir)
    assert not (tmp_path / "runs").exists()  # nothing in the default run root


def test_submitit_local_executor_runs_the_sweep(tmp_path, cache):
    sweep_dir = sweep(tmp_path, cache, "submitit_local", "hydra.launcher.timeout_min=10")
    check_jobs(sweep_dir)
    assert any((sweep_dir / ".submitit").iterdir())  # submitit's own job records
