"""scripts/train.py end to end: bad input refused before any work, a run's files, resume."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from script_runs import run_script

TINY = [
    "total_steps=512",
    "num_envs=16",
    "chunk_steps=256",
    "agent.hidden=[16]",
    "agent.batch_size=16",
    "agent.buffer_size=1024",
    "agent.learning_starts=64",
    "log.progress=false",
]


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
        (["num_envs=0", "env.encoder=foo"], "num_envs must be > 0, got 0"),
        (["env.encoder=foo"], "env.encoder must be one of ('onehot', 'continuous'), got 'foo'"),
        (["agent.gamma=1.5"], "agent.gamma must be in [0, 1], got 1.5"),
        (["haql.xi.kind=cosine"], "haql.xi.kind must be one of ('linear', 'exponential')"),
        (["haql.deployed_xi=-1"], "haql.deployed_xi must be >= 0 or null, got -1.0"),
        (["resume=/nonexistent/run"], "resume=/nonexistent/run: no such run directory"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, overrides, message):
    out = train(tmp_path, *overrides)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written: no run dir, no Hydra outputs


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

    changed = train(tmp_path, f"resume={run_dir}", "heuristic=true", *TINY, "num_envs=32")
    assert changed.returncode == 2
    assert "num_envs: checkpoint has 16, now 32" in changed.stderr

    fresh_over_old = train(tmp_path, f"run_dir={run_dir}", "heuristic=true", *TINY)
    assert fresh_over_old.returncode == 2
    assert "already holds a run" in fresh_over_old.stderr

    longer = [*TINY[1:], "total_steps=1024", "eval.enabled=false"]  # both resume-safe
    resumed = train(tmp_path, f"resume={run_dir}", "heuristic=true", *longer, cache=cache)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 1024
    with (run_dir / "metrics.csv").open() as f:
        assert [int(r["env_steps"]) for r in csv.DictReader(f)] == [256, 512, 768, 1024]
