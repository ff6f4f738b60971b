"""Data parallelism on 4 CPU devices: gradients averaged, parameters replicated, keys apart.

The checks run in a fresh process (`data_parallel_checks.py`) that forces 4 host devices,
which JAX only reads when it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from script_runs import run_script

from hmk8s.train.distributed import TopologyError, check_topology

FOUR_DEVICES = "--xla_force_host_platform_device_count=4"
ITERS = 500  # 2 updates per iteration: 1,000 updates


@pytest.fixture(scope="module")
def measured() -> dict:
    here = Path(__file__).parent
    env = {
        **os.environ,
        "XLA_FLAGS": FOUR_DEVICES,
        "PYTHONPATH": f"{here.parent}{os.pathsep}{here}",
    }
    done = subprocess.run(
        [sys.executable, str(here / "data_parallel_checks.py"), str(ITERS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_update_on_four_devices_is_the_one_device_update(measured):
    assert measured["same_data_diff"] <= 1e-6
    assert measured["split_data_diff"] <= 1e-6  # the mean over devices, not one device's step
    assert measured["split_vs_first_batch_diff"] > 1e-4
    assert measured["update_shard_spread"] == 0.0


def test_parameters_stay_identical_on_every_device(measured):
    assert measured["updates"] == ITERS * measured["updates_per_iter"] == 1000
    assert measured["learner_shard_spread"] == 0.0
    assert measured["finite_loss"]


def test_each_device_steps_its_share_into_its_own_replay(measured):
    # 8 envs over 4 devices: 2 per device; SMALL's replay of 64 rows: 16 per device
    assert measured["local_envs"] == 2
    assert measured["replay_rows"] == 16
    assert measured["env_steps"] == ITERS * 8
    assert measured["episodes"] == ITERS * 8 // 5  # counting env: 5-step episodes


def test_prioritised_replay_keeps_one_sum_tree_per_device_shard(measured):
    assert measured["per_updates"] == ITERS // 10 * measured["updates_per_iter"]
    assert measured["per_finite_loss"]
    assert measured["per_learner_shard_spread"] == 0.0
    assert measured["per_leaves"] == [4, 2, 16]  # device, seed, the 16 rows of each shard
    assert measured["per_positive_leaves"] == 4 * 2 * 16  # 50 iterations fill every shard
    assert measured["per_distinct_trees"] == 8  # every device and seed its own priorities
    assert measured["per_root_vs_leaves"] <= 1e-4


def test_key_streams_differ_across_devices_and_seeds(measured):
    assert measured["keys"] == 8  # 4 devices x 2 seeds
    assert measured["distinct_keys"] == 8


def test_checkpoint_from_another_topology_is_refused():
    here = {"devices": 4, "processes": 1}
    check_topology({"topology": here}, here)
    with pytest.raises(TopologyError, match="written by 2 device"):
        check_topology({"topology": {"devices": 2, "processes": 1}}, here)
    with pytest.raises(TopologyError, match="written by 1 device"):
        check_topology({}, here)  # a checkpoint without the record: one device


def test_envs_that_do_not_split_over_the_devices_are_refused(tmp_path):
    done = run_script(
        "train.py",
        tmp_path,
        "num_envs=6",
        "devices=4",
        f"run_dir={tmp_path / 'run'}",
        xla_flags=FOUR_DEVICES,
    )
    assert done.returncode == 2
    assert "num_envs=6 does not split evenly over 4 devices" in done.stderr
    assert not (tmp_path / "run").exists()
