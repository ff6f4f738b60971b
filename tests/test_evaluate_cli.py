"""scripts/evaluate.py end to end: a tiny evaluation writes its files; bad input is refused."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from script_runs import run_script, start_script

TINY = [
    "usecase=ml",
    "seeds=2",
    "total_steps=512",
    "num_envs=16",
    "agent.hidden=[16]",
    "agent.batch_size=16",
    "agent.learning_starts=64",
    "agent.updates_per_step=0.25",
    "evaluate.episodes=3",
    "evaluate.curve_points=2",
    "evaluate.bootstrap_reps=50",
    "evaluate.calibration.targets=[0.6,0.8]",
    "evaluate.calibration.tolerances=[0.1]",
    "evaluate.calibration.windows_s=[300.0]",
    "evaluate.calibration.headrooms=[0.5,0.7]",
    "evaluate.scenarios=[peak_x2,capacity_loss]",
]


def evaluate(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_script("evaluate.py", cwd, *overrides, timeout=900)


def test_tiny_evaluation_stopped_by_sigterm_resumes_and_writes_results_and_figures(tmp_path):
    ml_agent = "++evaluate.agent_by_usecase.ml={updates_per_step: 0.5}"
    proc = start_script("evaluate.py", tmp_path, *TINY, ml_agent, "run_dir=out")
    for line in proc.stdout:  # stopped while it trains: after its first curve point
        if "greedy IQM" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == [stderr.strip()]  # one line
    assert stderr.startswith("stopped by SIGTERM: ") and "resume=out continues" in stderr
    run = tmp_path / "out"
    stopped = json.loads((run / "results.json").read_text())
    assert stopped["meta"]["signal"] == "SIGTERM" and stopped["meta"]["complete"] is False
    assert not (run / "results.md").exists()
    again = evaluate(tmp_path, *TINY, ml_agent, "run_dir=out")
    assert again.returncode == 2 and "resume=out" in again.stderr  # never overwritten
    out = evaluate(tmp_path, *TINY, ml_agent, "resume=out")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no Hydra outputs/
    results = json.loads((run / "results.json").read_text())
    assert results["meta"]["command"].startswith("python scripts/evaluate.py usecase=ml")
    ml = results["results"]["ml"]
    baselines = {"random", "static", "heuristic", "hpa", "hpa_exact"}
    calibrated = {"hpa_calibrated", "hpa_exact_calibrated", "static_calibrated"}
    assert set(ml["policies"]) == {"dqn", "haql", *baselines, *calibrated}
    assert set(ml["calibration"]) == {"hpa", "hpa_exact", "static"}
    assert len(ml["calibration"]["hpa_exact"]["grid"]["validation_return"]) == 2
    assert set(ml["scenarios"]) == {"peak_x2", "capacity_loss"}
    assert set(ml["seconds"]) == {"baselines", "scenarios"}
    for scenario in ml["scenarios"].values():
        assert [len(v) for v in scenario["per_seed"]["haql"].values()] == [2] * 5
        assert "haql_beats_hpa_exact_calibrated" in scenario["targets"]
    assert [len(v) for v in ml["per_seed"]["haql"].values()] == [2] * 5
    assert ml["curves"]["dqn"]["steps"][0] == 0 and len(ml["curves"]["dqn"]["steps"]) == 3
    # ml's own ratio: 16 envs x 0.5 = 8 updates after each of the 32 iterations of 16 env
    # steps, from the 4th (64 = learning_starts) on: 29 x 8
    assert ml["agent_changes"] == {"updates_per_step": 0.5}
    assert ml["updates_per_step"] == 0.5
    assert ml["updates"] == {"dqn": 232, "haql": 232}
    deployed = ml["deployed_xi"]  # chosen on the curve episodes, under the SLA limit
    scores, sla = deployed["validation_returns"], deployed["validation_sla"]
    assert list(scores) == list(sla) == ["0.0", "0.25", "0.5", "1.0", "2.0", "4.0", "16.0"]
    limit = deployed["sla_limit"]
    targets = ("hpa_exact_calibrated", "hpa", "heuristic")
    assert limit == pytest.approx(min(ml["baseline_curve_sla"][b] for b in targets))
    allowed = [xi for xi in scores if sla[xi] <= limit] or list(scores)
    assert scores[str(deployed["value"])] == max(scores[xi] for xi in allowed)
    assert set(ml["targets"]) == {"haql_half_time", *(f"haql_beats_{b}" for b in targets)}
    for name in ("curves", "policies", "timeline"):
        assert (run / f"ml_{name}.png").stat().st_size > 10_000
    assert "## ML" in (run / "results.md").read_text()


def test_bad_input_is_refused_before_any_work(tmp_path):
    unknown = evaluate(tmp_path, "usecase=nope")
    assert unknown.returncode != 0
    assert "Could not find 'usecase/nope'" in unknown.stderr
    remote = evaluate(tmp_path, "backend=k8s")
    assert remote.returncode == 2
    assert "backend=k8s: the evaluation runs on the simulator" in remote.stderr
    bad = evaluate(tmp_path, "seeds=0")
    assert bad.returncode == 2
    assert "seeds must be > 0" in bad.stderr
    scenario = evaluate(tmp_path, "evaluate.scenarios=[peak_x3]")
    assert scenario.returncode == 2
    assert "evaluate.scenarios: unknown scenario 'peak_x3'; known: peak_x2" in scenario.stderr
    grid = evaluate(tmp_path, "evaluate.deployed_xi_grid=[1.0,-0.5]")
    assert grid.returncode == 2
    assert "evaluate.deployed_xi_grid must hold weights >= 0" in grid.stderr
    for changes, message in (
        (
            "agent_by_usecase.nope={hidden: [8]}",
            "evaluate.agent_by_usecase: unknown use case 'nope'",
        ),
        ("agent_by_usecase.ml={updates_per_step: 0.0}", "agent.updates_per_step must be > 0"),
        ("agent_by_usecase.stream={hiden: [8]}", "evaluate.agent_by_usecase.stream: Key 'hiden'"),
        ("budget_by_usecase.nope=2", "evaluate.budget_by_usecase: unknown use case 'nope'"),
        ("budget_by_usecase.ml=0", "evaluate.budget_by_usecase.ml must be > 0, got 0"),
    ):
        refused = evaluate(tmp_path, f"++evaluate.{changes}")
        assert refused.returncode == 2
        assert message in refused.stderr
    assert list(tmp_path.iterdir()) == []
