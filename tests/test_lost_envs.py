"""The k8s training run never trains on less than it was asked to, and never blocks its own
retry: an env that is lost mid-run stops the run (or, with ``backend.allow_env_loss``, the run
goes on and says so); a run that fails before any env is built leaves no run directory; what a
run leaves on the clusters is one line with the command that removes it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from async_envs import CountingEnv, fake_k8s, k8s_run_config

from hmk8s.k8s.cleanup import CleanupReport
from hmk8s.k8s.client import ClusterAccessError
from hmk8s.train.actor_learner.actor import EnvLost
from hmk8s.train.actor_learner.k8s_run import close_envs, run_async_training
from hmk8s.train.config import TrainConfig, resolve

BACKEND = fake_k8s(actor={"max_env_failures": 2, "failure_backoff_s": 0.0})


def config(run_dir: Path, **backend) -> TrainConfig:
    return k8s_run_config(run_dir, {**BACKEND, **backend}, num_envs=3, total_steps=60)


class Factory:
    """CountingEnvs; env ``lost`` fails every step from its ``after``-th on (its namespace
    deleted under the run); env ``leaky`` cannot delete its objects."""

    def __init__(self, lost: int | None = None, after: int = 5, leaky: int | None = None) -> None:
        self.envs: list[CountingEnv] = []
        self.lost, self.after, self.leaky = lost, after, leaky

    def __call__(self, index: int, cluster_map: dict) -> CountingEnv:
        env = Leaky(index, f"run-{index}") if index == self.leaky else CountingEnv(index)
        if index == self.lost:
            step = env.step

            def step_until_lost(action):
                if env.steps >= self.after:
                    raise ClusterAccessError(f"namespace hmk8s-0-e{index} not found")
                return step(action)

            env.step = step_until_lost
        self.envs.append(env)
        return env


class Leaky(CountingEnv):
    """An env whose objects cannot all be deleted."""

    def __init__(self, index: int, run_id: str) -> None:
        super().__init__(index)
        self.run_id = run_id

    def close(self) -> CleanupReport:
        self.closed = True
        return CleanupReport(
            errors=["delete Deployment hmk8s-firewall-small: 403\nForbidden"], remaining=7
        )


def test_a_lost_env_stops_the_run_and_cleans_up(tmp_path, caplog):
    """Env 1 is lost; env 0's objects cannot all be deleted (a revoked token): the run stops
    with the loss, and the leftovers are one line naming the command that removes them."""
    factory = Factory(lost=1, leaky=0)
    with (
        caplog.at_level(logging.ERROR, logger="hmk8s"),
        pytest.raises(EnvLost, match=r"env 1 was lost \(namespace hmk8s-0-e1 not found\)"),
    ):
        run_async_training(resolve(config(tmp_path / "run")), env_factory=factory)
    assert all(env.closed for env in factory.envs)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "EnvLost" in summary["error"] and summary["env_failures"][1] == 1  # fatal at once
    assert summary["env_steps"] < 60  # stopped, not trained on the two envs left
    assert summary["cleanup_errors"] == [
        "env 0: 7 objects left (delete Deployment hmk8s-firewall-small: 403 Forbidden); remove "
        "them with python scripts/cleanup.py --run-id run-0 --envs 3"
    ]
    assert summary["cleanup_errors"][0] in [r.getMessage() for r in caplog.records]


def test_with_allow_env_loss_the_run_goes_on_and_says_so(tmp_path, caplog):
    factory = Factory(lost=2)
    with caplog.at_level(logging.WARNING, logger="hmk8s"):
        summary = run_async_training(
            resolve(config(tmp_path / "run", allow_env_loss=True)), env_factory=factory
        )
    assert summary["env_steps"] == 60 and summary["error"] is None
    assert factory.envs[2].steps == 5 and summary["env_failures"][2] == 1
    said = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert said == [
        "env 2 was lost (namespace hmk8s-0-e2 not found); going on with 2 envs "
        "(backend.allow_env_loss)"
    ]


def test_a_run_refused_before_any_env_leaves_no_directory_to_block_its_retry(tmp_path):
    def refused(index: int, cluster_map: dict) -> CountingEnv:
        raise ClusterAccessError("context 'hmk8s-0': Unauthorized (the token was revoked)")

    run_dir = tmp_path / "run"
    with pytest.raises(ClusterAccessError, match="Unauthorized"):
        run_async_training(resolve(config(run_dir)), env_factory=refused)
    assert not run_dir.exists()
    existing = tmp_path / "given"
    existing.mkdir()
    with pytest.raises(ClusterAccessError):
        run_async_training(resolve(config(existing)), env_factory=refused)
    assert existing.is_dir() and list(existing.iterdir()) == []  # given, so kept, and empty
    summary = run_async_training(resolve(config(run_dir)), env_factory=Factory())  # the retry
    assert summary["env_steps"] == 60


def test_leftovers_are_one_line_each_with_the_command_that_removes_them(tmp_path, caplog):
    envs = [CountingEnv(0), Leaky(1, "run-1a2b-e1")]
    with caplog.at_level(logging.ERROR, logger="hmk8s"):
        errors = close_envs(envs, timeout_s=5.0)
    expected = (
        "env 1: 7 objects left (delete Deployment hmk8s-firewall-small: 403 Forbidden); remove "
        "them with python scripts/cleanup.py --run-id run-1a2b-e1 --envs 2"
    )
    assert errors == [expected]
    assert [r.getMessage() for r in caplog.records] == [expected]
