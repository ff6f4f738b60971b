"""The run lifecycle both trainers share: settings that would train silently wrong are refused,
a directory holding a run is never overwritten, NaN is written and halts, and SIGTERM stops a
run the way Ctrl-C does."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from async_envs import CountingEnv, fake_k8s, k8s_run_config, small_agent
from script_runs import run_script

from hmk8s.agents.config import AgentConfig, HaqlConfig
from hmk8s.train.actor_learner.core import make_async_fns
from hmk8s.train.actor_learner.k8s_run import run_async_training
from hmk8s.train.checkpoint import Checkpointer
from hmk8s.train.config import (
    MAX_NUM_ENVS,
    CheckpointConfig,
    ConfigError,
    TrainConfig,
    resolve,
)
from hmk8s.train.run import NonFiniteError, RunDirError, holds_run, open_run
from hmk8s.train.runlog import RunLog


def tiny(run_dir: Path | None = None, **changes) -> TrainConfig:
    return k8s_run_config(run_dir, fake_k8s(), **{"num_envs": 2, "total_steps": 40, **changes})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"agent": AgentConfig(learning_rate=math.nan)}, "agent.learning_rate must be a finite"),
        ({"agent": AgentConfig(learning_rate=math.inf)}, "agent.learning_rate must be a finite"),
        ({"agent": AgentConfig(updates_per_step=math.nan)}, "agent.updates_per_step must be"),
        ({"haql": HaqlConfig(eta=math.nan)}, "haql.eta must be a finite number"),
        ({"total_steps": 10**11}, "total_steps must be <= 2,080,374,784"),
        ({"num_envs": 5_000_000}, f"num_envs must be <= {MAX_NUM_ENVS:,}"),
        ({"total_steps": 5_000}, "agent.learning_starts (10,000) must be < total_steps (5,000)"),
        ({"agent": AgentConfig(priority_exponent=1.5)}, "agent.priority_exponent must be in [0,"),
        ({"agent": AgentConfig(priority_beta=-0.1)}, "agent.priority_beta must be in [0, 1], got"),
        ({"agent": AgentConfig(priority_epsilon=0.0)}, "agent.priority_epsilon must be > 0"),
        ({"agent": AgentConfig(sla_penalty=-0.1)}, "agent.sla_penalty must be a finite number"),
        ({"agent": AgentConfig(sla_penalty=math.nan)}, "agent.sla_penalty must be a finite"),
    ],
)
def test_settings_that_train_silently_wrong_are_refused(change, message):
    cfg = TrainConfig(usecase="ml", backend={})
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError) as err:
        resolve(cfg)
    assert message in str(err.value)


def test_a_directory_holding_a_run_is_refused_with_checkpoints_on_or_off(tmp_path):
    (tmp_path / "metrics.csv").write_text("seed,env_steps\n0,64\n")
    assert holds_run(tmp_path)
    for checkpoint in (CheckpointConfig(enabled=True), CheckpointConfig(enabled=False)):
        cfg = tiny(tmp_path, checkpoint=checkpoint)
        with pytest.raises(RunDirError, match="already holds a run"), open_run(cfg, {}, tmp_path):
            pass
    assert (tmp_path / "metrics.csv").read_text() == "seed,env_steps\n0,64\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_run_dir_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    run_dir = blocker / "run"
    with pytest.raises(RunDirError, match="cannot be written"), open_run(tiny(), {}, run_dir):
        pass


def test_the_k8s_run_refuses_an_existing_run_before_building_any_env(tmp_path):
    built: list[int] = []

    def factory(index: int, cluster_map: dict) -> CountingEnv:
        built.append(index)
        return CountingEnv(index, delay_s=0.0, episode=4)

    summary = run_async_training(resolve(tiny(tmp_path / "run")), env_factory=factory)
    assert summary["env_steps"] > 0
    history = (tmp_path / "run" / "history" / "env0.csv").read_text()
    built.clear()
    with pytest.raises(RunDirError, match="already holds a run"):
        run_async_training(resolve(tiny(tmp_path / "run")), env_factory=factory)
    assert built == []  # nothing touched: no env (no cluster object) was made
    assert (tmp_path / "run" / "history" / "env0.csv").read_text() == history
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary


def test_nan_is_written_as_nan_and_appends_on_resume(tmp_path):
    log = RunLog(tmp_path, {}, 100, tensorboard=False, progress=False)
    log.log_chunk(
        [{"seed": 0, "env_steps": 50, "loss": math.nan, "episode_return": 1.0, "sps": 1.0}]
    )
    log.close()
    resumed = RunLog(tmp_path, {}, 100, start_steps=50, tensorboard=False, progress=False)
    resumed.log_chunk(
        [{"seed": 0, "env_steps": 50, "loss": 2.0, "episode_return": 1.0, "sps": 1.0}]
    )  # replayed
    resumed.log_chunk(
        [{"seed": 0, "env_steps": 100, "loss": 1.5, "episode_return": 1.0, "sps": 1.0}]
    )
    resumed.close()
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["env_steps"], r["loss"]) for r in rows] == [("50", "nan"), ("100", "1.5")]


def test_non_finite_weights_halt_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    fns = make_async_fns(2, small_agent(), 2)
    state = fns.init(jax.random.PRNGKey(0), np.zeros((2,), np.float32))
    kept = r"last good checkpoint \(step 20\) is kept"
    with pytest.raises(NonFiniteError, match=kept), open_run(tiny(), {"a": 1}, tmp_path) as run:
        run.save(20, state, {})
        run.check_finite(state.learner.params)  # finite: passes
        run.check_finite(jax.tree.map(lambda x: x * jnp.nan, state.learner.params))
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    assert checkpoints.latest_step() == 20
    checkpoints.close()


def test_sigterm_takes_the_clean_stop_path_and_is_recorded(tmp_path):
    stops: list[int] = []

    def factory(index: int, cluster_map: dict) -> CountingEnv:
        env = CountingEnv(index, delay_s=0.01, episode=4)
        if index == 0:
            original = env.step

            def step(action):
                stops.append(1)
                if len(stops) == 5:  # from the env's worker thread, as an operator's kill
                    os.kill(os.getpid(), signal.SIGTERM)
                return original(action)

            env.step = step
        return env

    cfg = tiny(tmp_path / "run", total_steps=10_000)
    summary = run_async_training(resolve(cfg), env_factory=factory)
    assert summary["interrupted"] is True
    assert summary["signal"] == "SIGTERM"
    assert 0 < summary["env_steps"] < 10_000
    assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == summary["env_steps"]


def test_the_cli_gives_one_line_and_exit_code_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for overrides, message in [
        (["agent.learning_rate=nan"], "agent.learning_rate must be a finite number, got nan"),
        ([f"run_dir={blocker}/run"], "cannot be written"),
    ]:
        out = run_script("train.py", tmp_path, *overrides, "log.progress=false")
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line
        assert out.stderr.startswith("error: ")
        assert message in out.stderr
