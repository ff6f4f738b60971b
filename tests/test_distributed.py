"""Joining a multi-process run: settings from the config or the environment, and an
unreachable coordinator refused with one line after its timeout (JAX itself would abort)."""

from __future__ import annotations

import socket

import pytest
from script_runs import run_script

from hmk8s.train.distributed import DistributedConfig, TopologyError, process_settings


def test_single_process_without_a_coordinator():
    assert process_settings(DistributedConfig(), environ={}) is None


def test_settings_fall_back_to_the_environment():
    environ = {
        "HMK8S_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "HMK8S_NUM_PROCESSES": "4",
        "HMK8S_PROCESS_ID": "3",
    }
    got = process_settings(DistributedConfig(process_id=2, timeout_s=5), environ=environ)
    assert got == DistributedConfig("10.0.0.1:1234", 4, 2, 5)  # the setting wins over the env


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (DistributedConfig("h:1", num_processes=2), "process_id is not"),
        (DistributedConfig("h:1", 2, 2), "process_id 2 is not in [0, num_processes=2)"),
        (DistributedConfig("h", 2, 1), "expected host:port"),
    ],
)
def test_incomplete_settings_are_refused(cfg, message):
    with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace(")", r"\)")):
        process_settings(cfg, environ={})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_coordinator_is_one_clear_error(tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    done = run_script(
        "train.py",
        tmp_path,
        f"distributed.coordinator_address={address}",
        "distributed.num_processes=2",
        "distributed.process_id=1",
        "distributed.timeout_s=2",
        f"run_dir={tmp_path / 'run'}",
    )
    assert done.returncode == 2
    assert f"coordinator {address} not reachable within 2 s" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("peer", ["missing", "stranger"])
def test_a_process_left_alone_ends_with_one_line_not_an_abort(tmp_path, peer):
    """Process 0 whose peer never starts, or process 1 whose coordinator port is held by
    something else: JAX would abort with a C++ stack trace; the run says why in one line."""
    stranger = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks the protocol
    port = stranger.getsockname()[1] if peer == "stranger" else closed_port()
    try:
        done = run_script(
            "train.py",
            tmp_path,
            f"distributed.coordinator_address=127.0.0.1:{port}",
            "distributed.num_processes=2",
            f"distributed.process_id={0 if peer == 'missing' else 1}",
            "distributed.timeout_s=2",
            f"run_dir={tmp_path / 'run'}",
        )
    finally:
        stranger.close()
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not all join at 127.0.0.1:" in lines[0], lines
    assert not (tmp_path / "run").exists()
