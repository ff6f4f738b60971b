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


def test_seeds_split_over_the_seed_axis_are_the_same_runs(measured):
    # seeds=2 on a 2 x 2 mesh: each row trains one seed data-parallel over its 2 devices
    assert measured["seed_mesh_shape"] == {"seed": 2, "data": 2}
    assert measured["seed_rows_hold_their_seed"]
    assert measured["seed_updates"] == ITERS // 5 * measured["updates_per_iter"]
    assert measured["seed_replica_spread"] == 0.0  # a row's devices hold the same learner
    assert measured["seed_runs_differ"] > 1e-3  # and the two rows' seeds are apart
    # the same two runs as both seeds batched on each of 2 devices, up to float rounding
    assert measured["seed_params_diff"] <= 1e-6
    assert measured["seed_metrics_diff"] <= 1e-6
    assert measured["seed_keys"] == measured["seed_distinct_keys"] == 4


def test_checkpoint_from_another_topology_is_refused():
    here = {"devices": 4, "processes": 1, "seed_devices": 1}
    check_topology({"topology": here}, here)
    with pytest.raises(TopologyError, match="written by 2 device"):
        check_topology({"topology": {"devices": 2, "processes": 1}}, here)
    with pytest.raises(TopologyError, match="written by 1 device"):
        check_topology({}, here)  # a checkpoint without the record: one device
    rows = {"devices": 4, "processes": 1, "seed_devices": 2}
    check_topology({"topology": rows}, rows)
    with pytest.raises(
        TopologyError, match=r"this run has 4 device\(s\) in 1 process\(es\), 2 seed"
    ):
        check_topology({"topology": here}, rows)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_envs=6"], "num_envs=6 does not split evenly over 4 devices"),
        (["seed_devices=3"], "seed_devices=3 does not divide the run's 4 device(s)"),
        (["seeds=3", "seed_devices=2"], "seeds=3 does not split evenly over seed_devices=2"),
        (
            ["num_envs=9", "seeds=2", "seed_devices=2", "agent.lr_decay_updates=0"],
            "num_envs=9 does not split evenly over 2 devices (devices / seed_devices = 2)",
        ),
        (["seed_devices=0"], "seed_devices must be > 0, got 0"),
    ],
)
def test_a_mesh_the_run_does_not_split_over_is_refused(tmp_path, overrides, message):
    done = run_script(
        "train.py",
        tmp_path,
        *overrides,
        "devices=4",
        f"run_dir={tmp_path / 'run'}",
        xla_flags=FOUR_DEVICES,
    )
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
