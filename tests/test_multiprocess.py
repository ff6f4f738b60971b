"""One run over two processes on 127.0.0.1 (`jax.distributed`, gloo CPU collectives), two forced
host devices each, two seeds on a 2 by 2 mesh (each process holds one device of each seed's
row, so every seed trains data-parallel across the processes): process 0 alone writes the
run's files, both write their shards of the checkpoints, a resume ends bit for bit where the
uninterrupted run did, and a checkpoint is refused by another topology."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import jax
import pytest
from script_runs import run_script, start_script
from tiny import tiny_overrides

from hmk8s.train.checkpoint import load_params
from hmk8s.train.runlog import params_sha256

TWO_DEVICES = "--xla_force_host_platform_device_count=2"

TIMEOUT_S = 240
TWO_SEED_ROWS = ("seeds=2", "seed_devices=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_two_processes(cwd: Path, cache: Path, *overrides: str) -> list[tuple[int, str]]:
    """(exit status, stderr) of processes 0 and 1 of one training run; killed on timeout."""
    address = f"127.0.0.1:{free_port()}"
    procs = [
        start_script(
            "train.py",
            cwd,
            *tiny_overrides(
                f"distributed.coordinator_address={address}",
                "distributed.num_processes=2",
                f"distributed.process_id={pid}",
                *overrides,
                narrow=True,
            ),
            cache=cache,
            xla_flags=TWO_DEVICES,
        )
        for pid in (0, 1)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        errs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[1] for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the two processes did not end within {TIMEOUT_S} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache) -> tuple[Path, list[tuple[int, str]]]:
    """A two-chunk run of two seeds over two processes, with TensorBoard on."""
    cwd = tmp_path_factory.mktemp("two")
    ended = on_two_processes(
        cwd, cache, f"run_dir={cwd / 'run'}", "log.tensorboard=true", *TWO_SEED_ROWS
    )
    for code, err in ended:
        assert code == 0, err[-3000:]
    return cwd / "run", ended


def test_process_0_alone_writes_the_run_files(trained):
    run_dir, ended = trained
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock",  # process 0's advisory lock on the run directory
        "checkpoints",
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "tb",
    ]
    assert len(list((run_dir / "tb").iterdir())) == 1  # one event file: one writer
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    # (seed, env_steps): one row per seed and chunk, once
    assert [r.split(",")[:2] for r in rows[1:]] == [
        ["0", "128"],
        ["1", "128"],
        ["0", "256"],
        ["1", "256"],
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 256
    assert "params sha256" in ended[0][1]  # process 0 prints the summary table
    assert "params sha256" not in ended[1][1]


def test_both_processes_write_their_shards_of_each_checkpoint(trained):
    run_dir, _ = trained
    step = run_dir / "checkpoints" / "256"
    meta = json.loads((step / "meta" / "metadata").read_text())
    assert meta["topology"] == {"devices": 4, "processes": 2, "seed_devices": 2}
    for item in ("state", "replay"):
        assert len(set(meta["sha256"][item])) == 2  # one digest per process, of its own shards
        assert (step / item / "ocdbt.process_1").is_dir()
    # the checkpoint reads back in one process with the weights the run ended with
    summary = json.loads((run_dir / "summary.json").read_text())
    params = load_params(run_dir)[2]
    assert {leaf.shape[0] for leaf in jax.tree.leaves(params)} == {2}  # both seeds' weights
    assert params_sha256(params) == summary["params_sha256"]


def test_a_run_killed_after_its_first_checkpoint_resumes_bit_for_bit(trained, cache, tmp_path):
    run_dir, _ = trained
    killed = tmp_path / "run"
    shutil.copytree(run_dir, killed)
    shutil.rmtree(killed / "checkpoints" / "256")  # as if killed before the second checkpoint
    (killed / "summary.json").unlink()
    ended = on_two_processes(tmp_path, cache, f"resume={killed}", *TWO_SEED_ROWS)
    for code, err in ended:
        assert code == 0, err[-3000:]
    resumed = json.loads((killed / "summary.json").read_text())
    uninterrupted = json.loads((run_dir / "summary.json").read_text())
    assert resumed["env_steps"] == 256
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]
    assert len((killed / "metrics.csv").read_text().splitlines()) == 5  # no row twice


def test_another_topology_is_refused(trained, tmp_path):
    run_dir, _ = trained
    before = sorted(str(p) for p in run_dir.rglob("*"))
    done = run_script(
        "train.py",
        tmp_path,
        *tiny_overrides(f"resume={run_dir}", *TWO_SEED_ROWS, narrow=True),
        xla_flags=TWO_DEVICES,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: cannot resume: the checkpoint was written by 4 device(s) in 2 process(es), "
        "2 seed rows, this run has 2 device(s) in 1 process(es), 2 seed rows; resume with the "
        "same devices"
    )
    assert sorted(str(p) for p in run_dir.rglob("*")) == before


def test_a_run_of_two_processes_needs_its_run_dir(cache, tmp_path):
    for code, err in on_two_processes(tmp_path, cache):
        assert code == 2
        assert "a run of 2 processes needs run_dir=" in err
    assert list(tmp_path.iterdir()) == []
