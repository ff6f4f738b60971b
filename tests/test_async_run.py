"""`run_async_training` as a run: Ctrl-C checkpoints and closes every env, and a resumed run
continues every env's history and episode bookkeeping where the stopped one left them."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from async_envs import CountingEnv, fake_k8s, interrupt_after, k8s_run_config

from hmk8s.agents.replay import Transition
from hmk8s.k8s.config import env_cluster_maps, split_backend
from hmk8s.train.actor_learner.core import StepBook
from hmk8s.train.actor_learner.env_worker import StepRecord
from hmk8s.train.actor_learner.history import HistoryWriter, history_path, read_history
from hmk8s.train.actor_learner.k8s_run import run_async_training
from hmk8s.train.checkpoint import Checkpointer
from hmk8s.train.config import TrainConfig, resolve

NUM_ENVS = 3
BACKEND = fake_k8s(run_id="run-1", actor={"log_every": 5})


def config(run_dir: Path, total_steps: int, resume: bool = False) -> TrainConfig:
    resumed = str(run_dir) if resume else None
    return k8s_run_config(
        run_dir, BACKEND, num_envs=NUM_ENVS, total_steps=total_steps, resume=resumed
    )


class Factory:
    """Builds CountingEnvs; env 0 presses Ctrl-C at its ``interrupt_at``-th step."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.envs: list[CountingEnv] = []
        self.maps: list[dict] = []
        self.interrupt_at = interrupt_at

    def __call__(self, index: int, cluster_map: dict) -> CountingEnv:
        env = CountingEnv(index, delay_s=0.003 * (index + 1), episode=4 + index)
        if index == 0 and self.interrupt_at is not None:
            interrupt_after(env, self.interrupt_at)
        self.envs.append(env)
        self.maps.append(cluster_map)
        return env


def test_each_env_gets_its_own_namespaces_and_run_id():
    data, actor = split_backend(BACKEND)
    assert "actor" not in data and actor["max_seconds"] == 20.0
    maps = env_cluster_maps(data, 2)
    assert [c["namespace"] for c in maps[1]["clusters"]] == [
        "hmk8s-0-e1",
        "hmk8s-1-e1",
        "hmk8s-2-e1",
    ]
    assert maps[0]["run_id"] == "run-1-e0" and maps[1]["run_id"] == "run-1-e1"
    sets = [[{"context": f"c{i}-{k}", "namespace": "hmk8s"} for k in range(3)] for i in range(2)]
    assert env_cluster_maps(data, 2, sets)[1]["clusters"][2]["context"] == "c1-2"


def test_ctrl_c_then_resume_continues_every_env(tmp_path):
    first = Factory(interrupt_at=12)
    summary = run_async_training(resolve(config(tmp_path, 1_000_000)), env_factory=first)
    assert summary["interrupted"] and not summary["cleanup_errors"]
    assert all(env.closed for env in first.envs), "cluster objects of every env deleted"
    stopped = [env.steps for env in first.envs]
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == sum(stopped) == summary["env_steps"]
    ckpt.close()
    before = [read_history(history_path(tmp_path / "history", i)) for i in range(NUM_ENVS)]
    assert [len(rows) for rows in before] == stopped

    second = Factory()
    summary = run_async_training(resolve(config(tmp_path, sum(stopped) + 45, resume=True)), second)
    assert not summary["interrupted"] and summary["env_steps"] == sum(stopped) + 45
    assert all(env.closed for env in second.envs)
    for i in range(NUM_ENVS):
        rows = read_history(history_path(tmp_path / "history", i))
        assert rows[: len(before[i])] == before[i], "the stopped run's rows are kept as they were"
        assert [int(r["env_step"]) for r in rows] == list(range(len(rows)))
        assert len(rows) == stopped[i] + second.envs[i].steps
        for prev, row in itertools.pairwise(rows):
            if int(row["episode"]) == int(prev["episode"]):
                assert int(row["t"]) == int(prev["t"]) + 1
            else:
                assert int(row["episode"]) == int(prev["episode"]) + 1 and int(row["t"]) == 0
        if stopped[i] and second.envs[i].steps:
            resumed = rows[stopped[i]]
            assert int(resumed["episode"]) == int(rows[stopped[i] - 1]["episode"]) + 1
            assert int(resumed["t"]) == 0, "a resumed env starts a fresh episode"
        lengths = 4 + i
        for row in rows:
            assert int(row["truncated"]) == (int(row["t"]) == lengths - 1)
    logged = [int(r["env_steps"]) for r in read_history(tmp_path / "metrics.csv")]
    assert len(logged) > 1 and logged == sorted(logged) and logged[-1] <= summary["env_steps"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    done = sum(
        int(r["truncated"])
        for i in range(NUM_ENVS)
        for r in read_history(history_path(tmp_path / "history", i))
    )
    assert sum(saved["episodes_done"]) == done


def test_history_is_only_appended_on_resume(tmp_path):
    def record(env: int) -> StepRecord:
        zeros = np.zeros(2, np.float32)
        t = Transition(
            zeros,
            np.int32(1),
            np.float32(0.5),
            np.bool_(False),
            zeros,
            np.ones(3, bool),
            np.int32(2),
        )
        return StepRecord(
            env,
            t,
            hint=0,
            first=False,
            done=False,
            truncated=False,
            step_s=0.1,
            info={"pods": 3, "sla_violated": True},
        )

    crashed = HistoryWriter(tmp_path, np.zeros(2, np.int64))
    for k in range(5):
        crashed.write(record(0), StepBook(k, 0, k, 0.5 * (k + 1)))
    crashed.write(record(1), StepBook(0, 0, 0, 0.5))
    crashed.close()
    resumed = HistoryWriter(tmp_path, np.array([3, 1]))  # the checkpoint holds steps 0-2
    resumed.write(record(0), StepBook(3, 0, 3, 2.0))
    resumed.close()
    rows = read_history(history_path(tmp_path, 0))
    # the crashed run's rows past the checkpoint stay; the resumed run's row follows them
    assert [r["env_step"] for r in rows] == ["0", "1", "2", "3", "4", "3"]
    assert rows[-1]["episode_return"] == "2"
    assert rows[0]["pods"] == "3" and rows[0]["sla_violated"] == "1" and rows[0]["hint"] == "0"
    assert len(read_history(history_path(tmp_path, 1))) == 1


def test_the_async_path_imports_without_the_kubernetes_client():
    code = (
        "import sys\n"
        "sys.modules['kubernetes'] = None\n"
        "sys.modules['kmock'] = None\n"
        "import hmk8s.train.actor_learner.k8s_run, hmk8s.train.actor_learner.loop\n"
        "assert 'hmk8s.k8s.env' not in sys.modules and 'hmk8s.k8s.client' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
