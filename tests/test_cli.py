"""scripts/train.py end to end: bad input refused before any work, a run's files, resume."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from in_process import composed
from script_runs import run_script
from tiny import tiny_overrides

from hmk8s.domain.usecases import CONFIG_DIR, load_usecase
from hmk8s.shell.exit import EXIT_BAD_INPUT
from hmk8s.train import cli

#: Two chunks, evaluated, with TensorBoard: a run that writes every file a run writes.
RUN = ("total_steps=512", "eval.enabled=true", "log.tensorboard=true")
TINY = tiny_overrides(*RUN)


def train(cwd: Path, *overrides: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    return run_script("train.py", cwd, *overrides, cache=cache)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["bogus=1"], "Key 'bogus' not in 'TrainConfig'"),
        (["agent.bogus=1"], "Key 'bogus' not in 'AgentConfig'"),
        (["num_envs=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
        (["heuristic=maybe"], "is not a valid bool"),
        (["usecase=nope"], "Could not find 'usecase/nope'"),
        (["agent.gamma=1.5"], "agent.gamma must be in [0, 1], got 1.5"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, overrides, message):
    """As a user meets it: the script's exit code and message, and nothing written. Hydra refuses
    the first five while composing; the last stands for the settings the run checks itself,
    each checked in-process below."""
    out = train(tmp_path, *overrides)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written: no run dir, no Hydra outputs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_envs=0", "env.encoder=foo"], "num_envs must be > 0, got 0"),
        (["env.encoder=foo"], "env.encoder='foo': expected one of ('onehot', 'continuous')"),
        (["agent.lr_decay_updates=soon"], "agent.lr_decay_updates must be auto or a number >= 0"),
        (["haql.xi.kind=cosine"], "haql.xi.kind must be one of ('linear', 'exponential')"),
        (["haql.deployed_xi=-1"], "haql.deployed_xi must be >= 0 or null, got -1.0"),
        (["resume=/nonexistent/run"], "resume=/nonexistent/run: no such run directory"),
        (["agent=pqn", "agent.pqn.minibatches=3"], "agent.pqn.minibatches=3 must divide"),
        (["agent=pqn", "backend=k8s"], "agent.kind=pqn runs on backend=sim"),
        (["agent.kind=sarsa"], "agent.kind must be one of ('dqn', 'pqn'), got 'sarsa'"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path, monkeypatch, capsys, overrides, message):
    monkeypatch.chdir(tmp_path)
    with composed(*overrides) as cfg, pytest.raises(SystemExit) as exit:
        cli.main(cfg)
    assert exit.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []  # nothing written: no run dir


def test_haql_run_writes_its_files_and_resumes(tmp_path):
    cache = tmp_path / "jax-cache"
    out = train(tmp_path, "heuristic=true", "eval.episodes=2", *TINY, cache=cache)
    assert out.returncode == 0, out.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("ml-haql-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jax-cache", "runs"]  # no outputs/
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["usecase"] == "ml" and summary["heuristic"] is True
    assert summary["env_steps"] == 512
    assert len(summary["params_sha256"]) == 64
    for block in (summary["eval"], summary["baselines"]["hpa"]):
        assert {"return", "sla_violation_rate", "mean_pods"} <= set(block)
        assert 0.0 <= block["sla_violation_rate"] <= 1.0
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["env_steps"]) for r in rows] == [256, 512]
    assert 0.0 <= float(rows[-1]["sla_violation_rate"]) <= 1.0
    assert float(rows[-1]["xi"]) < 1.0  # the heuristic's weight has started to decay
    assert any((run_dir / "tb").iterdir())
    assert "heuristic: true" in (run_dir / "config.yaml").read_text()

    changed = train(
        tmp_path, f"resume={run_dir}", "heuristic=true", *tiny_overrides(*RUN, "num_envs=32")
    )
    assert changed.returncode == 2
    assert "num_envs: checkpoint has 16, now 32" in changed.stderr

    fresh_over_old = train(tmp_path, f"run_dir={run_dir}", "heuristic=true", *TINY)
    assert fresh_over_old.returncode == 2
    assert "already holds a run" in fresh_over_old.stderr

    longer = tiny_overrides("total_steps=1024", "log.tensorboard=true")  # both resume-safe
    resumed = train(tmp_path, f"resume={run_dir}", "heuristic=true", *longer, cache=cache)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 1024
    with (run_dir / "metrics.csv").open() as f:
        assert [int(r["env_steps"]) for r in csv.DictReader(f)] == [256, 512, 768, 1024]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("usecase.proxies.0.phase=nan", "proxies.0.phase=nan: Input should be a finite number"),
        ("usecase.step_seconds=inf", "step_seconds=inf: Input should be a finite number"),
        ("usecase.step_seconds=1e-9", "step_seconds=1e-09: Input should be greater than or equal"),
        ("usecase.proxies.1.base_rate=1e39", "proxies.1.base_rate=1e+39: Input should be less"),
        ("usecase.reward.beta=nan", "reward.beta=nan: Input should be a finite number"),
        ("usecase.proxies.2.burst_factor=inf", "proxies.2.burst_factor=inf: Input should be a"),
        ("usecase.proxies.0.noise=inf", "proxies.0.noise=inf: Input should be a finite number"),
        ("usecase.functions.encrypt.small.startup_s=inf", "small.startup_s=inf: Input should"),
        ("+usecase.trace=[]", "trace must have at least one row"),
        ("+usecase.trace=[1,2,3]", "trace.0=1: Input should be a valid tuple"),
        ("+usecase.trace=latin1.csv", "latin1.csv: not UTF-8 text (byte 3)"),
    ],
)
def test_bad_usecase_values_exit_2_with_one_line(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.csv").write_bytes("10,\xe9,3\n".encode("latin-1"))
    with composed(override) as cfg, pytest.raises(SystemExit) as exit:
        cli.main(cfg)
    assert exit.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: usecase=ml: ") and err.count("\n") == 1, err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.csv"]  # no run started


def test_relative_trace_is_read_beside_the_usecase_file(tmp_path, monkeypatch):
    mine = tmp_path / "mine" / "usecase"
    mine.mkdir(parents=True)
    mapping = yaml.safe_load((CONFIG_DIR / "ml.yaml").read_text())
    (mine / "own.yaml").write_text(yaml.safe_dump({**mapping, "trace": "rates.csv"}))
    (mine / "rates.csv").write_text("1,2,3\n4,5,6\n")
    (tmp_path / "rates.csv").write_text("7,8,9\n")  # the working directory's file of that name
    monkeypatch.chdir(tmp_path)
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'mine'}]"
    with composed(searchpath, "usecase=own") as cfg:
        cli.resolve_trace(cfg, "own")
        assert cfg.usecase.trace == str(mine / "rates.csv")
        assert load_usecase(dict(cfg.usecase)).trace == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    # a path given on the command line is the user's, relative to where they are
    with composed(searchpath, "usecase=own", "usecase.trace=rates.csv") as cfg:
        cli.resolve_trace(cfg, "own")
        assert cfg.usecase.trace == str(tmp_path / "rates.csv")
