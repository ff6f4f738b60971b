"""Sweeps through Hydra's multirun: each job its own run directory under the sweep directory,
run in parallel by the joblib launcher or as jobs by submitit (its local executor here, the
same code path as SLURM's), and consumed by `scripts/evaluate.py runs_from=<sweep dir>`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from script_runs import run_script
from tiny import tiny_overrides

import hmk8s
from hmk8s import sim
from hmk8s.domain.metrics import POLICY_METRIC_NAMES, summarise
from hmk8s.evaluate.experiment import EvaluateConfig
from hmk8s.evaluate.sweep import read_sweep
from hmk8s.policies.q_policy import q_policy
from hmk8s.policies.rollout import rollout
from hmk8s.train.config import ConfigError

pytestmark = pytest.mark.usefixtures("fast_compile")

TINY = tiny_overrides(narrow=True)


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


def check_jobs(sweep_dir: Path, jobs: int) -> dict[tuple[int, bool], Path]:
    """Each job trained its own seed (and agent) in its own directory with its own summary;
    the run directories by (seed, heuristic)."""
    runs, digests = {}, set()
    for job in range(jobs):
        run_dir = sweep_dir / str(job)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["env_steps"] == 256
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        runs[config["seed"], config["heuristic"]] = run_dir
        digests.add(summary["params_sha256"])
    assert len(runs) == len(digests) == jobs  # every job its own combination, its own agent
    return runs


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory, cache) -> Path:
    """Seeds 0 and 1 of DQN and HAQL, two jobs at a time."""
    tmp_path = tmp_path_factory.mktemp("joblib")
    sweep_dir = sweep(tmp_path, cache, "joblib", "heuristic=false,true", "hydra.launcher.n_jobs=2")
    assert not (tmp_path / "runs").exists()  # nothing in the default run root
    return sweep_dir


def test_joblib_sweep_gives_each_job_its_run_directory(joblib_sweep):
    runs = check_jobs(joblib_sweep, 4)
    assert sorted(runs) == [(0, False), (0, True), (1, False), (1, True)]


def test_submitit_local_executor_runs_the_sweep(tmp_path, cache):
    sweep_dir = sweep(tmp_path, cache, "submitit_local", "hydra.launcher.timeout_min=10")
    assert sorted(check_jobs(sweep_dir, 2)) == [(0, False), (1, False)]
    assert any((sweep_dir / ".submitit").iterdir())  # submitit's own job records
    done = run_script("evaluate.py", tmp_path, f"runs_from={sweep_dir}", "usecase=ml")
    assert done.returncode == 2
    assert "no haql run of use case ml (found ml/dqn x2)" in done.stderr


def test_evaluate_scores_each_run_of_the_sweep_as_its_own_agent(joblib_sweep, tmp_path):
    out = tmp_path / "out"
    done = run_script(
        "evaluate.py",
        tmp_path,
        f"runs_from={joblib_sweep}",
        "usecase=ml",
        "evaluate.episodes=3",
        "evaluate.bootstrap_reps=50",
        "evaluate.deployed_xi_grid=[]",
        f"run_dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ml = json.loads((out / "results.json").read_text())["results"]["ml"]
    assert ml["seeds"] == 2 and ml["total_steps"] == 256
    for agent in ("dqn", "haql"):
        assert ml["curves"][agent]["steps"] == [0, 128, 256]  # step 0 and each checkpoint
    # each seed's score is that of its run's last checkpoint, loaded and played on its own on
    # the evaluation's held-out episodes (HAQL with its deployed weight xi.end * eta)
    env = sim.ClusterEnv()
    eval_key = jax.random.split(jax.random.PRNGKey(EvaluateConfig().key))[1]
    agents = {k: hmk8s.load_agent(run) for k, run in check_jobs(joblib_sweep, 4).items()}
    first = next(iter(agents.values()))
    env_params, encoder = first.env_params, first.manifest.env["encoder"]

    @jax.jit
    def play(q_params, bonus):  # one program for the four agents: weights and bonus as inputs
        policy = q_policy(first.network.apply, q_params, encoder, bonus)
        return rollout(env, env_params, policy, eval_key, 3)

    for (seed, heuristic), agent in agents.items():
        assert agent.manifest.bonus == (0.5 if heuristic else 0.0)
        own = summarise(play(agent.q_params, agent.manifest.bonus))
        scored = ml["per_seed"]["haql" if heuristic else "dqn"]
        for metric in POLICY_METRIC_NAMES:
            np.testing.assert_allclose(scored[metric][seed], own[metric], rtol=1e-5, atol=1e-6)
    assert (out / "ml_curves.png").is_file() and "## ML" in (out / "results.md").read_text()


def test_runs_that_disagree_are_refused(joblib_sweep, tmp_path):
    for (seed, heuristic), run_dir in check_jobs(joblib_sweep, 4).items():
        shutil.copytree(run_dir, tmp_path / f"{seed}-{'haql' if heuristic else 'dqn'}")
    groups = read_sweep(tmp_path, ["ml"], None)
    assert [r.seed for r in groups["ml"].runs["haql"]] == [0, 1]
    assert groups["ml"].cfg.seeds == 2 and groups["ml"].steps == [128, 256]
    with pytest.raises(ConfigError, match="no dqn run of use case ehr"):
        read_sweep(tmp_path, ["ehr"], None)
    run = tmp_path / "1-haql"
    (run / "checkpoints" / "128").rename(tmp_path / "aside")
    with pytest.raises(ConfigError, match=r"at different steps \(\[128, 256\] vs \[256\]\)"):
        read_sweep(tmp_path, ["ml"], None)
    (tmp_path / "aside").rename(run / "checkpoints" / "128")
    changed = yaml.safe_load((run / "config.yaml").read_text())
    changed["agent"]["gamma"] = 0.5
    (run / "config.yaml").write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigError, match=r"differ in agent\.gamma: 0\.99 vs 0\.5"):
        read_sweep(tmp_path, ["ml"], None)
    changed["agent"]["gamma"], changed["seed"] = 0.99, 0
    (run / "config.yaml").write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigError, match="two haql runs of ml train seed 0"):
        read_sweep(tmp_path, ["ml"], None)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ConfigError, match="1-haql: no checkpoints"):
        read_sweep(tmp_path, ["ml"], None)
    (run / "summary.json").unlink()
    with pytest.raises(ConfigError, match=r"1-haql: no summary\.json"):
        read_sweep(tmp_path, ["ml"], None)
    shutil.rmtree(run)
    with pytest.raises(ConfigError, match=r"train different seeds .*\[\(0, 1\), \(1, 1\)\] vs"):
        read_sweep(tmp_path, ["ml"], None)
